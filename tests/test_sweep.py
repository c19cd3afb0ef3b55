"""``metasparse sweep`` on a tiny glyphs checkpoint: one row per setting × shot on the same
episodes, paired differences to SVM-CS, per-episode sparsity, the files it writes, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from metasparse.checkpoint import load_checkpoint
from metasparse.cli import main
from metasparse.sweep.report import PLOTS


def test_sweep_writes_paired_rows_report_and_plots(tiny_group_sparse_checkpoint, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--checkpoint",
        str(tiny_group_sparse_checkpoint),
        "--ratios",
        "0",
        "0.9",
        "--shot",
        "1",
        "3",
        "--query",
        "3",
        "--episodes",
        "12",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = data["rows"]
    labels = ["group_sparse_svm@0", "group_sparse_svm@0.9", "svm_cs", "proto"]
    assert [(r["setting"], r["shot"]) for r in rows] == [(s, k) for k in (1, 3) for s in labels]
    for shot in (1, 3):
        by = {r["setting"]: r for r in rows if r["shot"] == shot}
        assert all(r["episodes"] == 12 for r in by.values())
        assert by["svm_cs"]["diff_vs_svm_cs"] == 0.0
        # the paired difference is the mean of per-episode differences on the same episodes
        gs = by["group_sparse_svm@0.9"]
        diffs = [
            a - b
            for a, b in zip(
                gs["per_episode_accuracy"], by["svm_cs"]["per_episode_accuracy"], strict=True
            )
        ]
        assert gs["diff_vs_svm_cs"] == pytest.approx(sum(diffs) / len(diffs))
        # λ1 near λ_max leaves features out; at 0 the head uses (nearly) all of them
        assert gs["features_used_mean"] < by["group_sparse_svm@0"]["features_used_mean"]
        assert gs["converged"] == 1.0 and by["proto"].get("features_used_mean") is None
    with (out / "results.csv").open(encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## 5-way 1-shot" in report and "**(best)**" in report
    for name in (*PLOTS, "support_5w1s.png", "support_5w3s.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    arrays = np.load(out / "arrays.npz")
    # per-feature arrays for every head solved by the certified solver (SVM-CS's too)
    sparse = [i for i, r in enumerate(rows) if r["head"] in ("group_sparse_svm", "svm_cs")]
    assert sorted(arrays.files) == sorted(f"{k}_{i}" for i in sparse for k in ("usage", "first"))
    assert list((out / "tb").iterdir()), "TensorBoard hparams were not written"


def test_sweep_rejects_bad_ratios_and_too_many_ways(tiny_group_sparse_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "sweep",
                "--checkpoint",
                str(tiny_group_sparse_checkpoint),
                "--ratios",
                "1.5",
                "--output",
                "x",
            ]
        )
    assert "must lie in [0, 1]" in capsys.readouterr().err
    argv = [
        "sweep",
        "--checkpoint",
        str(tiny_group_sparse_checkpoint),
        "--way",
        "500",
        "--output",
        str(tmp_path),
    ]
    assert main([*argv, "--no-progress"]) == 2
    assert "lower --way" in capsys.readouterr().err


class _Recorder(torch.nn.Module):
    """A head that records the episodes it is given and predicts class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, query, support, support_labels, n_way):
        self.seen.append(torch.cat([support.flatten(), query.flatten()]))
        return torch.zeros(*query.shape[:2], n_way), {}


def test_every_setting_of_a_sweep_sees_the_same_episodes(tiny_group_sparse_checkpoint):
    from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
    from metasparse.sweep import measure_heads

    model, cfg = model_from_checkpoint(load_checkpoint(tiny_group_sparse_checkpoint))
    a, b = _Recorder(), _Recorder()
    measured, _ = measure_heads(
        model, cfg, [("a", "a", a), ("b", "b", b)], [5], [1], 2, 6, 3, torch.device("cpu")
    )
    assert len(a.seen) == len(b.seen) == 6
    assert all(torch.equal(x, y) for x, y in zip(a.seen, b.seen, strict=True))
    assert len({float(x.sum()) for x in a.seen}) > 1  # and the episodes differ from each other
    assert [m.row["episodes"] for m in measured] == [6, 6]


def _tiny_base_config(path):
    path.write_text(
        """
name: tiny_sweep
data: {name: glyphs, augment: false}
model:
  backbone: conv4
  backbone_options: {hidden: 8, out_channels: 8}
  head: group_sparse_svm
  head_options: {lam_ratio: 0.1}
train: {way: 5, shot: 2, query: 2, episodes_per_batch: 2, batches_per_epoch: 2, epochs: 2}
val: {way: 5, shot: 1, query: 2, episodes: 2}
""",
        encoding="utf-8",
    )
    return path


def test_config_sweep_trains_each_setting_and_resumes_without_redoing(
    tmp_path, monkeypatch, capsys
):
    import metasparse.sweep.runs as runs
    from metasparse.training import Trainer

    base = _tiny_base_config(tmp_path / "base.yaml")
    out = tmp_path / "sweep"
    argv = [
        "sweep", "--config", str(base), "--ratios", "0", "0.5", "--baselines", "svm_cs",
        "--shot", "1", "--query", "2", "--episodes", "4", "--output", str(out), "--no-progress",
    ]  # fmt: skip
    fits: list[str] = []
    real_fit = Trainer.fit

    def counting_fit(self, max_steps=None):
        fits.append(self.run_dir.name)
        return real_fit(self, max_steps)

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    # an interruption during the second setting: the first is done, the second half-trained
    real_train = runs.train_run

    def interrupted(cfg, progress):
        if cfg.run_dir.name.startswith("group_sparse_svm@0.5"):
            Trainer(cfg, progress=False).fit(max_steps=1)
            raise KeyboardInterrupt
        return real_train(cfg, progress)

    monkeypatch.setattr(runs, "train_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert fits == ["group_sparse_svm@0-seed0", "group_sparse_svm@0.5-seed0"]
    assert (out / "runs/group_sparse_svm@0-seed0/sweep_test.json").is_file()
    monkeypatch.setattr(runs, "train_run", real_train)
    fits.clear()
    tested: list[str] = []
    real_measure = runs.measure_heads

    def counting_measure(model, cfg, heads, *args, **kwargs):
        tested.extend(label for label, _, _ in heads)
        return real_measure(model, cfg, heads, *args, **kwargs)

    monkeypatch.setattr(runs, "measure_heads", counting_measure)
    assert main(argv) == 0
    # the finished setting is neither trained nor tested again; the unfinished one resumes
    assert fits == ["group_sparse_svm@0.5-seed0", "svm_cs-seed0"]
    assert tested == ["group_sparse_svm@0.5", "svm_cs"]
    last = load_checkpoint(out / "runs/group_sparse_svm@0.5-seed0/checkpoints/last.pt")
    assert last["global_step"] == 4 and last["epoch"] == 2
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    assert [(r["setting"], r["seed"]) for r in rows] == [
        ("group_sparse_svm@0", 0),
        ("group_sparse_svm@0.5", 0),
        ("svm_cs", 0),
    ]
    cfg = yaml.safe_load((out / "runs/svm_cs-seed0/config.yaml").read_text(encoding="utf-8"))
    assert cfg["model"]["head"] == "svm_cs" and cfg["model"]["head_options"] == {}
    cfg = yaml.safe_load(
        (out / "runs/group_sparse_svm@0.5-seed0/config.yaml").read_text(encoding="utf-8")
    )
    assert cfg["model"]["head_options"] == {"lam_ratio": 0.5}
    assert all(r["diff_vs_svm_cs"] is not None for r in rows)
    # a third run redoes nothing at all
    fits.clear()
    tested.clear()
    assert main(argv) == 0
    assert fits == [] and tested == []
    # the same output with other training settings: refused, not served the old runs
    capsys.readouterr()
    assert main([*argv, "train.lr=0.5"]) == 2
    assert fits == [] and tested == []
    err = capsys.readouterr().err
    assert "holds a run of another config" in err and "train.lr" in err and "--output" in err


def test_sweep_processes_sharing_an_output_split_the_settings(tmp_path, monkeypatch):
    """A setting another process holds is skipped, then taken once its lock is released."""
    import metasparse.sweep.runs as runs

    base = _tiny_base_config(tmp_path / "base.yaml")
    out = tmp_path / "sweep"
    trained: list[str] = []

    def fake_train_and_test(cfg, name, label, *args):
        trained.append(label)
        return [label]

    monkeypatch.setattr(runs, "_train_and_test", fake_train_and_test)
    other = runs.run_lock(out / "runs" / "group_sparse_svm@0-seed0")  # "another process"
    assert other.__enter__() is True
    waits: list[float] = []

    def release(seconds):  # the other process finishes while this one waits
        waits.append(seconds)
        other.__exit__(None, None, None)

    monkeypatch.setattr(runs.time, "sleep", release)
    measured, _ = runs.run_config_sweep(
        base, [], [0.0, 0.5], out, baselines=(), shots=[1], episodes=2, progress=False
    )
    assert trained == ["group_sparse_svm@0.5", "group_sparse_svm@0"]  # the free one first
    assert waits == [runs.POLL_SECONDS]
    assert measured == ["group_sparse_svm@0", "group_sparse_svm@0.5"]  # in the sweep's order


def test_a_killed_sweep_process_leaves_no_setting_locked(tmp_path):
    import metasparse.sweep.runs as runs

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(run_dir / runs.LOCK_NAME)!r}, 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with runs.run_lock(run_dir) as mine:
            assert not mine
    finally:
        holder.kill()  # SIGKILL: no cleanup runs in the holder
        holder.wait()
    with runs.run_lock(run_dir) as mine:
        assert mine


def test_config_sweep_refuses_checkpoint_only_and_unknown_keys(tmp_path, capsys):
    base = _tiny_base_config(tmp_path / "base.yaml")
    argv = ["sweep", "--config", str(base), "--output", str(tmp_path / "o"), "train.nope=1"]
    assert main(argv) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--output", "x"])  # neither --checkpoint nor --config


def test_staged_warm_started_re_solves_decide_features_as_one_tight_solve(monkeypatch):
    # the sweep decides the features a 1e-5 solve leaves open by float64 re-solves at 1e-7 and
    # then 1e-10, each warm-started: the gap-safe test is safe at any gap, so the statistics
    # are those of one cold solve at 1e-10 wherever that decides every feature
    from metasparse.heads.group_sparse_svm import GroupSparseSVMHead
    from metasparse.sweep import measure

    gen = torch.Generator().manual_seed(5)
    way, shot, p, T = 5, 5, 40, 6
    y = torch.arange(way).repeat_interleave(shot).expand(T, -1)
    X = (
        torch.randn(T, way, p, generator=gen)[:, y[0]]
        + torch.randn(T, way * shot, p, generator=gen)
    ).relu()
    batch = {"support": X, "support_labels": y, "query": X[:, :3]}
    stats = {}
    for tols in ((1e-10,), measure.TIGHT_TOLS):
        monkeypatch.setattr(measure, "TIGHT_TOLS", tols)
        clf = measure._SparseClassifier(GroupSparseSVMHead(lam_ratio=0.3), way)
        with torch.no_grad():
            clf(batch)
        stats[tols] = clf
    staged, single = stats[measure.TIGHT_TOLS], stats[(1e-10,)]
    assert sum(single.per_task["tightened"]) > 0  # the 1e-5 solve left features open
    assert max(single.per_task["features_undetermined"]) == 0.0
    assert staged.per_task == single.per_task
    assert all((a == b).all() for a, b in zip(staged.masks, single.masks, strict=True))
