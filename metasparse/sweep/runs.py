"""``metasparse sweep --config``: one meta-training per λ1/λ_max (and seed), then the test.

Each setting trains from the same base config in its own folder ``OUTPUT/runs/<setting>-seed<s>``
(its checkpoints and TensorBoard log). A finished run is never trained again, an unfinished one
resumes from its ``last.pt``, and a run's test results are kept beside it (``sweep_test.json``,
``sweep_arrays.npz``), so an interrupted sweep restarted with the same arguments redoes nothing
it had finished. Several sweep processes may share one ``OUTPUT`` (on one machine, or several on a
shared file system with working ``flock``): each setting is trained by whichever process takes
its lock first, and the others go on to the next setting, then wait for the held ones.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from metasparse.checkpoint import check_resumable, load_checkpoint, model_from_checkpoint
from metasparse.config import Config, load_config
from metasparse.model import resolve_device
from metasparse.sweep.backbone import measure_heads
from metasparse.sweep.measure import (
    Measured,
    certified_svm_cs,
    load_arrays,
    save_arrays,
    settings,
)
from metasparse.utils import atomic_write_json

LOCK_NAME = "sweep.lock"
POLL_SECONDS = 30.0  # how often a process re-checks settings other processes hold


@dataclass(frozen=True)
class TestProtocol:
    """What a run is tested on; a cached test is reused only for the same protocol."""

    ways: tuple[int, ...]
    shots: tuple[int, ...]
    query: int
    episodes: int
    seed: int
    split: str | None
    svm_cs_solver: str


def run_config(
    base: str | Path, overrides: list[str], name: str, options: dict[str, Any], seed: int, out: Path
) -> Config:
    """The config of one setting: the base config with this head, its options and seed."""
    cfg = load_config(base, overrides)
    keep = dict(cfg.model.head_options) if cfg.model.head == name else {}
    cfg.model.head = name
    cfg.model.head_options = {**keep, **options}
    cfg.train.seed = seed
    cfg.name = out.name
    cfg.output_dir = str(out)
    return cfg


def train_run(cfg: Config, progress: bool) -> dict[str, Any]:
    """Train ``cfg`` to its end: skipped when finished, resumed when interrupted."""
    from metasparse.training import Trainer

    last = cfg.run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        ckpt = load_checkpoint(last)
        try:  # a run trained under other settings must not stand in for this one
            check_resumable(ckpt, cfg)
        except ValueError as exc:
            raise ValueError(
                f"{cfg.run_dir} holds a run of another config than this sweep's ({exc}); "
                "sweep into another --output, or remove that run folder to train it again"
            ) from exc
        if ckpt["epoch"] >= cfg.train.epochs:
            return {"trained": False, "history": ckpt["history"]}
    trainer = Trainer(cfg, resume=last.is_file(), progress=progress)
    summary = trainer.fit()
    return {"trained": True, "history": summary["history"]}


def _cached(run_dir: Path, protocol: TestProtocol) -> list[Measured] | None:
    path = run_dir / "sweep_test.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("protocol") != json.loads(json.dumps(asdict(protocol))):
        return None
    return load_arrays(run_dir / "sweep_arrays.npz", data["rows"])


def _store(run_dir: Path, protocol: TestProtocol, measured: list[Measured]) -> None:
    save_arrays(run_dir / "sweep_arrays.npz", measured)
    # the JSON last: it marks the test as done only once the arrays are on disk
    atomic_write_json(
        run_dir / "sweep_test.json",
        {"protocol": asdict(protocol), "rows": [m.row for m in measured]},
    )


def run_config_sweep(
    config: str | Path,
    overrides: list[str],
    ratios: list[float],
    output: str | Path,
    seeds: int = 1,
    baselines: tuple[str, ...] = ("svm_cs", "proto"),
    ways: list[int] | None = None,
    shots: list[int] | None = None,
    query: int = 15,
    episodes: int = 1000,
    episode_seed: int = 0,
    data_root: str | None = None,
    split: str | None = None,
    device: str = "auto",
    progress: bool = True,
    svm_cs_solver: str = "certified",
) -> tuple[list[Measured], dict[str, Any]]:
    """Train every setting × seed (resuming), test each run's own head on the same episodes."""
    out = Path(output)
    ways, shots = ways or [5], shots or [1, 5]
    protocol = TestProtocol(
        tuple(ways), tuple(shots), query, episodes, episode_seed, split, svm_cs_solver
    )
    base = load_config(config, overrides)  # unknown keys fail here, before any training
    if data_root is not None:
        overrides = [*overrides, f"data.root={data_root}"]
    plan = [
        (label, name, options, base.train.seed + s)
        for s in range(seeds)
        for label, name, options in settings(ratios, list(baselines))
    ]
    dev = resolve_device(device)
    found: dict[int, list[Measured]] = {}
    meta: dict[str, Any] = {}
    pending = list(enumerate(plan))
    while pending:
        held = []
        for i, (label, name, options, seed) in pending:
            run_dir = out / "runs" / f"{label}-seed{seed}"
            with run_lock(run_dir) as mine:
                if not mine:  # another sweep process is on it: come back to it later
                    held.append((i, (label, name, options, seed)))
                    continue
                cfg = run_config(config, overrides, name, options, seed, run_dir)
                if progress:
                    tqdm.write(f"[{i + 1}/{len(plan)}] {label}, training seed {seed}: {run_dir}")
                found[i] = _train_and_test(cfg, name, label, seed, protocol, dev, progress, meta)
        if held and len(held) == len(pending):
            if progress:
                names = ", ".join(f"{item[0]}-seed{item[3]}" for _, item in held)
                tqdm.write(f"waiting for settings other sweep processes hold: {names}")
            time.sleep(POLL_SECONDS)
        pending = held
    measured = [m for i in sorted(found) for m in found[i]]
    meta.update(
        config=str(config),
        overrides=overrides,
        seeds=seeds,
        dataset=base.data.name,
        split=split or base.data.test_split,
        ways=ways,
        shots=shots,
        query=query,
        episodes=episodes,
        episode_seed=episode_seed,
        svm_cs_solver=svm_cs_solver,
        train_steps=base.train.epochs * base.train.batches_per_epoch,
    )
    return measured, meta


def _train_and_test(
    cfg: Config,
    name: str,
    label: str,
    seed: int,
    protocol: TestProtocol,
    dev: Any,
    progress: bool,
    meta: dict[str, Any],
) -> list[Measured]:
    """Train one setting's run (or find it trained), then test it (or find its cached test)."""
    run_dir = cfg.run_dir
    done = train_run(cfg, progress)
    rows = _cached(run_dir, protocol)
    if rows is not None:
        return rows
    # the checkpoint is read only to test it
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=dev)
    model, run_cfg = model_from_checkpoint(ckpt, dev)
    head = model.head
    if name == "svm_cs" and protocol.svm_cs_solver == "certified":
        head = certified_svm_cs(head)  # its own C, jitter and learned scale
    rows, run_meta = measure_heads(
        model,
        run_cfg,
        [(label, name, head)],
        list(protocol.ways),
        list(protocol.shots),
        protocol.query,
        protocol.episodes,
        protocol.seed,
        dev,
        split=protocol.split,
        progress=progress,
    )
    meta.update(run_meta)
    for m in rows:
        m.row["seed"] = seed
        m.row["run_dir"] = str(run_dir)
        m.row["best_val"] = ckpt["best_val"]
        m.row["train_seconds"] = _train_seconds(done["history"])
    _store(run_dir, protocol, rows)
    return rows


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold ``run_dir``'s sweep lock while inside; yields False when another process holds it.

    An ``flock`` on ``run_dir/sweep.lock``: the kernel drops it when its process ends, killed
    or not, so a crashed sweep never leaves a setting locked.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_seconds(history: list[dict[str, Any]]) -> float | None:
    """Training and validation seconds of the run, summed over its resumes."""
    return float(history[-1]["elapsed_seconds"]) if history else None
