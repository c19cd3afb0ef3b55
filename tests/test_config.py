"""Config loading: inheritance, overrides, and clear errors on unknown keys or types."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasparse.config import apply_override, from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_loads_and_names_known_parts():
    from metasparse.backbones import available_backbones
    from metasparse.data import available_datasets
    from metasparse.heads import available_heads

    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) >= 40
    for f in files:
        cfg = load_config(f)
        assert cfg.data.name in available_datasets(), f
        assert cfg.model.backbone in available_backbones(), f
        assert cfg.model.head in available_heads(), f


def test_metaoptnet_grid_is_complete():
    for ds in ("miniimagenet", "tieredimagenet", "cifar-fs", "fc100"):
        for bb in ("resnet12", "conv4"):
            for head in ("proto", "ridge", "svm_cs", "group_sparse_svm"):
                cfg = load_config(REPO / "configs" / ds / f"{bb}_{head}.yaml")
                assert (cfg.data.name, cfg.model.backbone, cfg.model.head) == (ds, bb, head)
    mini = load_config(REPO / "configs/miniimagenet/resnet12_svm_cs.yaml")
    assert (mini.train.shot, mini.train.query, mini.train.episodes_per_batch) == (15, 6, 8)
    assert mini.train.label_smoothing == pytest.approx(0.1)
    assert mini.train.nesterov and mini.train.weight_decay == pytest.approx(5e-4)


def test_overrides_typed_and_nested():
    cfg = load_config(None, ["train.epochs=3", "train.lr=1", "model.head_options.lam_ratio=0.1"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.lr, float)
    assert cfg.model.head_options == {"lam_ratio": 0.1}


@pytest.mark.parametrize(
    "item, match",
    [
        ("train.epoch=3", r"unknown config key 'train.epoch' — did you mean 'epochs'"),
        ("trian.epochs=3", r"unknown config key 'trian'"),
        ("train.epochs=abc", r"train.epochs.*expects int"),
        ("train.nesterov=1", r"true or false"),
        ("train=3", r"is a section"),
        ("train.epochs", r"section.key=value"),
    ],
)
def test_bad_overrides_name_the_problem(item, match):
    cfg = from_dict({})
    with pytest.raises(ValueError, match=match):
        apply_override(cfg, item)


def test_unknown_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ValueError, match="did you mean 'epochs'"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_base_inheritance_and_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 7, lr: 0.5}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {lr: 0.2}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.epochs, cfg.train.lr) == (7, 0.2)
    (tmp_path / "c.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ValueError, match="includes itself through 'base'; remove the cycle"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=0", r"'train\.lr' must be a positive finite number.*0\.001 for Adam"),
        ("train.lr=.nan", r"'train\.lr' must be a positive finite number"),
        ("train.momentum=1.0", r"'train\.momentum' must lie in \[0, 1\)"),
        ("train.weight_decay=-0.0001", r"'train\.weight_decay' must be >= 0"),
        ("train.label_smoothing=1.0", r"'train\.label_smoothing' must lie in \[0, 1\)"),
        ("train.lr_schedule=[20, 0.1]", r"malformed entry 20.*\[\[epoch, factor\]"),
        ("train.lr_schedule=[[20, 0.1, 3]]", r"malformed entry \[20, 0\.1, 3\]"),
        ("train.lr_schedule=[[20, 0]]", r"factors > 0"),
        ("train.way=1", r"'train\.way' must be at least 2"),
        ("val.shot=0", r"'val\.shot' must be at least 1"),
        ("val.episodes=0", r"'val\.episodes' must be at least 1"),
        ("train.checkpoint_every=-1", r"'train\.checkpoint_every' must be >= 0"),
        ("train.log_every=0", r"'train\.log_every' must be at least 1"),
        ("train.checkpoint_minutes=-1", r"'train\.checkpoint_minutes' must be >= 0.*0 turns"),
        (
            "train.bn_group_episodes=3",
            r"'train\.bn_group_episodes' must be 0 or divide train\.episodes_per_batch=8.*divisor",
        ),
    ],
)
def test_training_ranges_are_checked_with_a_fix(override, message):
    from metasparse.config import check_training, load_config

    cfg = load_config(None, [override])
    with pytest.raises(ValueError, match=message):
        check_training(cfg)


def test_default_and_shipped_training_configs_pass_the_range_checks():
    from pathlib import Path

    from metasparse.config import check_training, load_config

    check_training(load_config(None))
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert len(configs) > 10
    for path in configs:
        check_training(load_config(path))


def test_unknown_device_is_a_clear_error():
    from metasparse.model import resolve_device

    with pytest.raises(ValueError, match="unknown device 'gpu'; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
