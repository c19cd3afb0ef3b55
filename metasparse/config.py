"""Experiment configuration: typed dataclasses, YAML files and ``key=value`` overrides.

Every key is checked: an unknown one is an error naming the closest valid key, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how its episodes are loaded."""

    name: str = "glyphs"
    root: str | None = None  # relative roots are taken under $METASPARSE_DATA when set
    options: dict[str, Any] = field(default_factory=dict)  # builder-specific (e.g. split_scheme)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    augment: bool = True
    num_workers: int = 0


@dataclass
class ModelConfig:
    """Backbone and head, each by registry name with its constructor options."""

    backbone: str = "conv4"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    head: str = "proto"
    head_options: dict[str, Any] = field(default_factory=dict)
    # the backbone's activations in channels-last (NHWC) memory format: same results up to
    # round-off, faster convolutions on CPUs (benchmarks/loop_overhead.py)
    channels_last: bool = False
    # float32 | bfloat16 | float16: the backbone's forward (training, validation, test) under
    # torch.autocast to that dtype, its weights kept in float32; the head always gets float32
    # features. float16 trains with a loss scaler (torch.amp.GradScaler). README, "Mixed
    # precision and torch.compile"; measured in benchmarks/results/loop_overhead_precision.json
    backbone_precision: str = "float32"
    # torch.compile the backbone for training (Inductor; on CPUs it needs a C++ compiler)
    compile: bool = False


@dataclass
class TrainConfig:
    """Meta-training episodes and optimizer (defaults: MetaOptNet's miniImageNet recipe)."""

    way: int = 5
    shot: int = 15
    query: int = 6
    episodes_per_batch: int = 8
    # BatchNorm statistics over groups of this many episodes of a batch (0: the whole batch).
    # N processes normalise each their own share (episodes_per_batch / N), so one process with
    # groups of that size trains as they do (README, "Distributed training").
    bn_group_episodes: int = 0
    batches_per_epoch: int = 1000
    epochs: int = 60
    optimizer: str = "sgd"  # sgd (MetaOptNet: Nesterov momentum) | adam (ProtoNets: Adam)
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    nesterov: bool = True
    weight_decay: float = 5e-4
    # whether weight decay also pulls the head's learnable logit scale (MetaOptNet: yes)
    scale_weight_decay: bool = True
    # [epoch, factor] pairs: from that (0-based) epoch on, lr = base lr × factor
    lr_schedule: list[list[float]] = field(
        default_factory=lambda: [[20, 0.06], [40, 0.012], [50, 0.0024]]
    )
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every: int = 0  # extra mid-epoch checkpoints every N steps (0: off)
    # ... and every M minutes of wall time (0: off), so a kill loses minutes, not an epoch
    checkpoint_minutes: float = 10.0
    log_every: int = 10


@dataclass
class EvalConfig:
    """Fixed, seeded validation episodes evaluated after every epoch."""

    way: int = 5
    shot: int = 5
    query: int = 15
    episodes: int = 500
    episodes_per_batch: int = 8
    seed: int = 1234


@dataclass
class Config:
    """A whole experiment."""

    name: str = "experiment"
    output_dir: str = "runs/{name}"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        """The output folder, with ``{name}`` substituted."""
        return Path(self.output_dir.format(name=self.name))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)


def _unknown_key(key: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    return ValueError(
        f"unknown config key '{where}{key}'{hint} (valid keys: {', '.join(sorted(valid))})"
    )


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Check a value against the type of the default it replaces (ints accepted for floats)."""
    if current is None or value is None or isinstance(current, dict):
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, type(current)):
        raise ValueError(
            f"config key {key!r} expects {type(current).__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    return value


def _merge(obj: Any, updates: dict[str, Any], prefix: str = "") -> None:
    valid = [f.name for f in dataclasses.fields(obj)]
    for key, value in updates.items():
        if key not in valid:
            raise _unknown_key(key, valid, prefix)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config section {prefix}{key!r} must be a mapping, got {value!r}")
            _merge(current, value, f"{prefix}{key}.")
        else:
            setattr(obj, key, _coerce(value, current, prefix + key))


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested dict, rejecting unknown keys."""
    cfg = Config()
    _merge(cfg, data or {})
    return cfg


def _require(ok: bool, key: str, rule: str, value: Any, fix: str) -> None:
    if not ok:
        raise ValueError(f"config key {key!r} {rule}, got {value!r}; {fix}")


def check_training(cfg: Config) -> None:
    """Range checks of what training reads, each error naming the key, the rule and a fix."""
    t, v = cfg.train, cfg.val
    from metasparse.precision import check_precision

    check_precision(cfg.model.backbone_precision)
    for section, obj in (("train", t), ("val", v)):
        for key in ("way", "shot", "query", "episodes_per_batch"):
            value = getattr(obj, key)
            least = 2 if key == "way" else 1
            _require(
                value >= least,
                f"{section}.{key}",
                f"must be at least {least}",
                value,
                "episodes need that many",
            )
    for key in ("batches_per_epoch", "epochs", "log_every"):
        _require(
            getattr(t, key) >= 1,
            f"train.{key}",
            "must be at least 1",
            getattr(t, key),
            "give a positive integer",
        )
    g = t.bn_group_episodes
    _require(
        g == 0 or (g > 0 and t.episodes_per_batch % g == 0),
        "train.bn_group_episodes",
        f"must be 0 or divide train.episodes_per_batch={t.episodes_per_batch}",
        g,
        f"use 0 (one group: the whole batch) or a divisor of {t.episodes_per_batch}",
    )
    _require(
        v.episodes >= 1,
        "val.episodes",
        "must be at least 1",
        v.episodes,
        "validation needs episodes",
    )
    _require(
        t.checkpoint_every >= 0,
        "train.checkpoint_every",
        "must be >= 0",
        t.checkpoint_every,
        "0 turns step-count checkpoints off",
    )
    _require(
        t.checkpoint_minutes >= 0,
        "train.checkpoint_minutes",
        "must be >= 0",
        t.checkpoint_minutes,
        "0 turns timed checkpoints off",
    )
    _require(
        t.lr > 0 and t.lr == t.lr and t.lr != float("inf"),
        "train.lr",
        "must be a positive finite number",
        t.lr,
        "e.g. 0.1 for SGD, 0.001 for Adam",
    )
    _require(
        0.0 <= t.momentum < 1.0,
        "train.momentum",
        "must lie in [0, 1)",
        t.momentum,
        "MetaOptNet uses 0.9",
    )
    _require(
        t.weight_decay >= 0.0,
        "train.weight_decay",
        "must be >= 0",
        t.weight_decay,
        "MetaOptNet uses 5e-4",
    )
    _require(
        0.0 <= t.label_smoothing < 1.0,
        "train.label_smoothing",
        "must lie in [0, 1)",
        t.label_smoothing,
        "0 turns it off",
    )
    sched = t.lr_schedule
    fix = "write it as [[epoch, factor], ...], e.g. [[20, 0.06], [40, 0.012]]"
    _require(isinstance(sched, list), "train.lr_schedule", "must be a list", sched, fix)
    for item in sched:
        well = (
            isinstance(item, list | tuple)
            and len(item) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in item)
        )
        _require(well, "train.lr_schedule", f"has a malformed entry {item!r}", sched, fix)
        _require(
            item[0] >= 0 and item[1] > 0,
            "train.lr_schedule",
            f"needs epochs >= 0 and factors > 0 (entry {item!r})",
            sched,
            fix,
        )


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file; a top-level ``base: other.yaml`` (relative to it) lies underneath."""
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found; see the configs/ folder")
    if path.resolve() in seen:
        raise ValueError(
            f"config {path} includes itself through 'base'; remove the cycle from the "
            "'base:' entries"
        )
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level")
    data = dict(loaded or {})
    base = data.pop("base", None)
    if base is None:
        return data
    parent = _read_yaml(path.parent / str(base), (*seen, path.resolve()))
    return _deep_merge(parent, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults) and apply ``section.key=value`` overrides."""
    data = _read_yaml(Path(path)) if path is not None else {}
    cfg = from_dict(data)
    for item in overrides or []:
        apply_override(cfg, item)
    return cfg


def apply_override(cfg: Config, item: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML: numbers, lists, booleans)."""
    if "=" not in item:
        raise ValueError(
            f"override {item!r} must look like section.key=value (e.g. train.epochs=5)"
        )
    dotted, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    parts = dotted.strip().split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        prefix = ".".join(parts[:depth]) + ("." if depth else "")
        last = depth == len(parts) - 1
        if isinstance(node, dict):  # free-form option dicts (head_options.lam_ratio=0.1)
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
            continue
        valid = [f.name for f in dataclasses.fields(node)]
        if part not in valid:
            raise _unknown_key(part, valid, prefix)
        if last:
            current = getattr(node, part)
            if dataclasses.is_dataclass(current):
                raise ValueError(f"{dotted!r} is a section; override one of its keys")
            setattr(node, part, _coerce(value, current, dotted))
        else:
            node = getattr(node, part)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from metasparse.utils import atomic_write_bytes

    atomic_write_bytes(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
