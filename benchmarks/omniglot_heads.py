"""Meta-train Conv-4 on Omniglot with several heads, then meta-test: the issue-2 CPU benchmark.

Usage (from the repo root; the figures go to benchmarks/results/omniglot_heads.json):

    python benchmarks/omniglot_heads.py --root ../shared/data/omniglot --heads proto ridge svm_cs

Each head is trained with ``configs/omniglot/conv4_<head>.yaml`` (overrides via ``--set``), then
tested on the held-out characters at 5/20-way 1/5-shot on fixed episodes, and on 20 one-shot
runs in the official layout built from evaluation characters.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.config import load_config
from metasparse.data import build_dataset
from metasparse.data.omniglot_runs import read_runs, write_runs
from metasparse.evaluation import evaluate, omniglot_runs_error
from metasparse.training import train
from metasparse.utils import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    """Train, test and record each head."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(REPO.parent / "shared/data/omniglot"))
    p.add_argument("--heads", nargs="+", default=["proto", "ridge", "svm_cs"])
    p.add_argument("--set", nargs="*", default=[], help="config overrides for every head")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--output-dir", default="runs/bench_omniglot")
    p.add_argument("--results", default=str(REPO / "benchmarks/results/omniglot_heads.json"))
    p.add_argument("--skip-train", action="store_true", help="reuse existing checkpoints")
    args = p.parse_args()

    results = json.loads(Path(args.results).read_text()) if Path(args.results).is_file() else {}
    results["machine"] = {
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    runs_dir = Path(tempfile.mkdtemp(prefix="omniglot_runs_"))
    write_runs(runs_dir, args.root, n_runs=20, ways=20, seed=0)
    for head in args.heads:
        cfg = load_config(
            REPO / f"configs/omniglot/conv4_{head}.yaml",
            [f"data.root={args.root}", f"output_dir={args.output_dir}/{head}", *args.set],
        )
        start = time.perf_counter()
        if not args.skip_train:
            summary = train(cfg, progress=True)
        train_seconds = time.perf_counter() - start
        ckpt = load_checkpoint(cfg.run_dir / "checkpoints/best.pt")
        history = ckpt["history"]
        model, _ = model_from_checkpoint(ckpt)
        test_set = build_dataset(
            "omniglot", cfg.data.test_split, root=args.root, augment=False, **cfg.data.options
        )
        rows = []
        for way in (5, 20):
            for shot in (1, 5):
                r = evaluate(
                    model,
                    test_set,
                    way,
                    shot,
                    15 if way == 5 else 5,
                    args.episodes,
                    seed=0,
                    progress=True,
                    desc=f"{head} {way}w{shot}s",
                )
                rows.append(
                    {
                        "way": way,
                        "shot": shot,
                        "query": 15 if way == 5 else 5,
                        "episodes": r["episodes"],
                        "accuracy": r["accuracy"],
                        "ci95": r["ci95"],
                        "head_stats": r["head_stats"],
                    }
                )
                print(f"{head:>8} {way:>2}-way {shot}-shot {r['accuracy']:6.2f} ± {r['ci95']:.2f}")
        errors = omniglot_runs_error(model, read_runs(runs_dir, image_size=28), torch.device("cpu"))
        steps = [h["train_means"] for h in history if h.get("train_means")]
        split = {
            k: sum(s.get(k, 0.0) for s in steps) / max(len(steps), 1)
            for k in ("time/data", "time/backbone", "time/head")
        }
        results[head] = {
            "config": cfg.to_dict(),
            "train_seconds": None if args.skip_train else train_seconds,
            "steps": cfg.train.epochs * cfg.train.batches_per_epoch,
            "best_val": ckpt["best_val"],
            "best_epoch": ckpt["best_epoch"],
            "step_time_split_s": split,
            "test": rows,
            "omniglot_runs_error_rate": sum(errors) / len(errors),
            "omniglot_runs_per_run": errors,
        }
        if not args.skip_train:
            results[head]["train_summary_best_val"] = summary["best_val_accuracy"]
        atomic_write_json(args.results, results)
    print(
        json.dumps(
            {
                h: {"test": results[h]["test"], "runs": results[h]["omniglot_runs_error_rate"]}
                for h in args.heads
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
