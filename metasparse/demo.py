"""``metasparse demo``: meta-train Conv-4 on the built-in glyphs with several heads, then meta-test.

Needs no download and fits in about five minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.config import Config, from_dict
from metasparse.data import FewShotDataset, build_dataset
from metasparse.evaluation import evaluate
from metasparse.model import FewShotModel
from metasparse.training import train
from metasparse.utils import atomic_write_json

DEMO_HEADS = ("proto", "svm_cs", "group_sparse_svm")
DEMO_WAY, DEMO_SHOTS, DEMO_QUERY = 5, (1, 5), 15  # the meta-test settings
_HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "proto": {},
    "ridge": {"lam": 50.0},
    "svm_cs": {"C_reg": 0.1, "max_iter": 15},
    # λ1/λ_max = 0.1: tasks drop 5-20% of the features and stay within 1 point of SVM-CS
    # (benchmarks/results/head_learning.json); at 0.01 every feature is used
    "group_sparse_svm": {"lam_ratio": 0.1},
}


def demo_config(head: str, output: Path, steps: int, seed: int, val_episodes: int = 100) -> Config:
    """The demo's run: Conv-4 on glyphs, 4 episodes of 5-way 5-shot per step, two epochs."""
    return from_dict(
        {
            "name": f"demo_{head}",
            "output_dir": str(output / head),
            "data": {"name": "glyphs", "augment": False},
            "model": {"backbone": "conv4", "head": head, "head_options": _HEAD_OPTIONS[head]},
            "train": {
                "way": 5,
                "shot": 5,
                "query": 5,
                "episodes_per_batch": 4,
                "batches_per_epoch": max(steps // 2, 1),
                "epochs": 2,
                "lr": 0.1,
                "lr_schedule": [[1, 0.1]],
                "seed": seed,
                "log_every": 5,
            },
            "val": {"way": 5, "shot": 1, "query": 15, "episodes": val_episodes},
        }
    )


def meta_test(model: FewShotModel, test_set: FewShotDataset, episodes: int) -> list[dict[str, Any]]:
    """One row per demo shot (5-way 1/5-shot, 15 queries, episode seed 0): accuracy, ci95 and head
    stats (features used, ...) on the same fixed episodes for every head and benchmark run."""
    rows = []
    for shot in DEMO_SHOTS:
        r = evaluate(model, test_set, DEMO_WAY, shot, DEMO_QUERY, episodes, seed=0)
        rows.append(
            {
                "way": DEMO_WAY,
                "shot": shot,
                "query": DEMO_QUERY,
                "episodes": r["episodes"],
                "accuracy": r["accuracy"],
                "ci95": r["ci95"],
                "head_stats": r["head_stats"],
            }
        )
    return rows


def run_demo(args: argparse.Namespace) -> int:
    """Train and test each head; print accuracy ± 95% CI against chance."""
    output = Path(args.output)
    results = []
    for head in args.heads:
        if head not in _HEAD_OPTIONS:
            raise ValueError(f"unknown demo head {head!r}; choose from {', '.join(_HEAD_OPTIONS)}")
        # a shortened demo (--episodes below 100) validates on as few episodes as it tests
        cfg = demo_config(head, output, args.steps, args.seed, min(100, args.episodes))
        if (cfg.run_dir / "config.yaml").is_file():  # an earlier demo: start afresh
            shutil.rmtree(cfg.run_dir)
        print(f"== meta-training Conv-4 + {head} on glyphs ({args.steps} steps)")
        start = time.perf_counter()
        train(cfg, progress=not args.no_progress)
        train_s = time.perf_counter() - start
        ckpt = load_checkpoint(cfg.run_dir / "checkpoints" / "best.pt")
        model, _ = model_from_checkpoint(ckpt)
        for row in meta_test(model, build_dataset("glyphs", "test"), args.episodes):
            stats = row.pop("head_stats")
            results.append({"head": head, **row, "train_seconds": train_s, "head_stats": stats})
    print(f"\nmeta-test on held-out glyph classes ({args.episodes} episodes, chance 20.0%)")
    print(
        f"{'head':<18} {'5-way 1-shot':>16} {'5-way 5-shot':>16} {'train (s)':>10}"
        f"  features used (1 / 5-shot)"
    )
    for head in args.heads:
        rows = {r["shot"]: r for r in results if r["head"] == head}
        cells = [f"{rows[s]['accuracy']:6.2f} ± {rows[s]['ci95']:4.2f}" for s in (1, 5)]
        used = [rows[s]["head_stats"].get("features_used") for s in (1, 5)]
        sparsity = "" if None in used else f"  {used[0]:.0%} / {used[1]:.0%}"
        print(
            f"{head:<18} {cells[0]:>16} {cells[1]:>16} {rows[1]['train_seconds']:>10.0f}{sparsity}"
        )
    results_path = Path(args.results) if args.results else output / "results.json"
    atomic_write_json(results_path, results)
    print(f"\nresults in {results_path}; TensorBoard: tensorboard --logdir {output}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``demo``."""
    p = sub.add_parser("demo", help="train + test on the built-in glyph dataset (~5 CPU minutes)")
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--heads", nargs="+", default=list(DEMO_HEADS))
    p.add_argument("--steps", type=int, default=150, help="training steps per head")
    p.add_argument("--episodes", type=int, default=500, help="test episodes per setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--results", default=None, help="results JSON (default: OUTPUT/results.json)")
    p.set_defaults(func=run_demo)
