"""Meta-train a backbone with several heads, then meta-test each on fixed episodes (CPU runs).

Usage (from the repo root):

    python benchmarks/heads_accuracy.py omniglot --root ../shared/data/omniglot \\
        --heads proto ridge svm_cs
    python benchmarks/heads_accuracy.py miniimagenet --root ../shared/data/miniimagenet \\
        --heads proto svm_cs

Each head is trained with ``configs/omniglot/conv4_<head>.yaml`` or
``configs/miniimagenet/cpu/conv4_<head>.yaml`` (or ``--config FILE`` for one head; extra overrides
via ``--set``), then tested on the test classes (Omniglot: 5/20-way 1/5-shot and 20 one-shot runs
in Lake et al.'s layout, written from evaluation alphabets no split of the config trains on;
miniImageNet: 5-way 1/5-shot, 15 queries). Figures go to
``benchmarks/results/<dataset>_heads.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.config import load_config
from metasparse.data import build_dataset
from metasparse.evaluation import evaluate, omniglot_runs_error
from metasparse.training import train
from metasparse.utils import atomic_write_json, cpu_name

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # dataset -> (config folder, [(way, shot, query)])
    "omniglot": ("configs/omniglot", [(5, 1, 15), (5, 5, 15), (20, 1, 5), (20, 5, 5)]),
    "miniimagenet": ("configs/miniimagenet/cpu", [(5, 1, 15), (5, 5, 15)]),
}


def runs_alphabets(split_scheme: str) -> list[str]:
    """Evaluation alphabets a model trained with ``split_scheme`` has never seen."""
    from metasparse.data.omniglot import split_definitions
    from metasparse.data.omniglot_runs import held_out_alphabets

    if split_scheme == "lake":  # trains on the background set: every evaluation alphabet
        spec = split_definitions()["vinyals"]  # its splits name all 20, Gurmukhi twice
        return sorted({a for split in spec.values() for a in split.get("evaluation", {})})
    return held_out_alphabets()


def train_seconds(history: list[dict[str, Any]]) -> float | None:
    """Seconds of training and validation summed over every process of the run (resumes too)."""
    return history[-1].get("elapsed_seconds") if history else None


def step_time_split(history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean seconds per training step in data / backbone / head over the run's epochs."""
    means = [h["train_means"] for h in history if h.get("train_means")]
    keys = ("time/data", "time/backbone", "time/head")
    return {k: sum(m.get(k, 0.0) for m in means) / max(len(means), 1) for k in keys}


def table(results: dict[str, Any], tags: list[str] | None = None) -> str:
    """The README's markdown table of a results file: one row per recorded run (``tags``: these
    runs, in this order)."""
    lines = []
    for tag in tags or list(results):
        entry = results.get(tag)
        if tags and entry is None:
            raise ValueError(f"no run {tag!r} in the results; recorded: {', '.join(results)}")
        if not isinstance(entry, dict) or "test" not in entry:
            continue
        rows = entry["test"]
        if lines == []:
            settings = " | ".join(f"{r['way']}-way {r['shot']}-shot" for r in rows)
            lines += [
                f"| run | {settings} | one-shot runs, error | train min "
                "| s/step data / backbone / head | features used |",
                "| --- " * (len(rows) + 5) + "|",
            ]
        accs = " | ".join(f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" for r in rows)
        err = entry.get("omniglot_runs_error_rate")
        minutes = entry.get("train_seconds")
        split = entry.get("step_time_split_s", {})
        used = [r["head_stats"].get("features_used") for r in rows]
        lines.append(
            f"| {tag} | {accs} | {'-' if err is None else f'{err:.1f} %'} | "
            f"{'-' if minutes is None else f'{minutes / 60:.0f}'} | "
            + " / ".join(
                f"{split.get(k, 0.0):.3f}" for k in ("time/data", "time/backbone", "time/head")
            )
            + " | "
            + ("-" if None in used else " / ".join(f"{100 * u:.0f}%" for u in used))
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    """Train, test and record each head."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=sorted(SETTINGS))
    p.add_argument("--root", default=None, help="the dataset folder (required unless --table)")
    p.add_argument("--table", action="store_true", help="print the results file as a table")
    p.add_argument("--tags", nargs="*", default=None, help="--table: these runs, in order")
    p.add_argument("--heads", nargs="+", default=["proto", "ridge", "svm_cs"])
    p.add_argument("--config", default=None, help="train this config instead (one head in --heads)")
    p.add_argument("--results", default=None, help="default: results/<dataset>_heads.json")
    p.add_argument("--set", nargs="*", default=[], help="config overrides for every head")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--output-dir", default=None, help="default: runs/bench_<dataset>")
    p.add_argument("--skip-train", action="store_true", help="reuse existing checkpoints")
    p.add_argument(
        "--test-checkpoint",
        choices=("best", "last"),
        default="best",
        help="test best.pt (best validation) or last.pt (the fixed budget: for runs that train "
        "on train + val, whose validation classes are seen in training)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last.pt"
    )
    p.add_argument(
        "--tag",
        default=None,
        help="key of the results entry and run folder (default: the head's name); use it to "
        "record several settings of one head, e.g. --tag group_sparse_svm@0.1",
    )
    p.add_argument(
        "--test-head",
        default=None,
        help="meta-test with this head instead of the trained one (e.g. group_sparse_svm with "
        "--test-head-option lam_ratio=0 tests an SVM-CS backbone with the same problem solved "
        "to a certificate, where qpth is too slow at 20-way 5-shot on a CPU)",
    )
    p.add_argument("--test-head-option", action="append", default=[], help="key=value (YAML)")
    args = p.parse_args()
    if args.tag and len(args.heads) != 1:
        p.error("--tag names one run: give exactly one head")
    if args.threads:
        torch.set_num_threads(args.threads)

    config_dir, settings = SETTINGS[args.dataset]
    if args.table:
        path = Path(args.results or REPO / f"benchmarks/results/{args.dataset}_heads.json")
        print(table(json.loads(path.read_text(encoding="utf-8")), args.tags))
        return
    if args.root is None:
        p.error("--root is required to train and test")
    out_dir = args.output_dir or f"runs/bench_{args.dataset}"
    results_path = Path(args.results or REPO / f"benchmarks/results/{args.dataset}_heads.json")
    machine = {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": cpu_name(),
    }
    if args.config and len(args.heads) != 1:
        p.error("--config trains one run: give exactly one head in --heads")

    for head in args.heads:
        cfg = load_config(
            args.config or REPO / config_dir / f"conv4_{head}.yaml",
            [f"data.root={args.root}", f"output_dir={out_dir}/{args.tag or head}", *args.set],
        )
        if cfg.model.head != head:
            p.error(f"{args.config} trains head {cfg.model.head!r}, not {head!r}")
        if not args.skip_train:
            train(cfg, resume=args.resume, progress=True)
        last = load_checkpoint(cfg.run_dir / "checkpoints/last.pt")
        ckpt = load_checkpoint(cfg.run_dir / "checkpoints/best.pt")
        model, _ = model_from_checkpoint(last if args.test_checkpoint == "last" else ckpt)
        test_head = None
        if args.test_head:
            from metasparse.heads import build_head

            options = {}
            for item in args.test_head_option:
                key, _, value = item.partition("=")
                options[key] = yaml.safe_load(value)
            model.head = build_head(args.test_head, **options)  # the scale leaves argmax alone
            test_head = {"head": args.test_head, "options": options}
        test_set = build_dataset(
            cfg.data.name, cfg.data.test_split, root=args.root, augment=False, **cfg.data.options
        )
        rows = []
        start = time.perf_counter()
        for way, shot, query in settings:
            r = evaluate(model, test_set, way, shot, query, args.episodes, seed=0)
            rows.append(
                {
                    "way": way,
                    "shot": shot,
                    "query": query,
                    "episodes": r["episodes"],
                    "accuracy": r["accuracy"],
                    "ci95": r["ci95"],
                    "head_stats": r["head_stats"],
                }
            )
            print(f"{head:>17} {way:>2}-way {shot}-shot {r['accuracy']:6.2f} ± {r['ci95']:.2f}")
        entry: dict[str, Any] = {
            "machine": machine,
            "config": cfg.to_dict(),
            "test_head": test_head,
            "tested_checkpoint": f"{args.test_checkpoint}.pt",
            "train_seconds": train_seconds(last["history"]),
            "test_seconds": time.perf_counter() - start,
            "steps": cfg.train.epochs * cfg.train.batches_per_epoch,
            "best_val": ckpt["best_val"],
            "best_epoch": ckpt["best_epoch"],
            "val_curve": [h["val_accuracy"] for h in last["history"]],
            "val_curve_steps": [h["step"] for h in last["history"]],
            "step_time_split_s": step_time_split(last["history"]),
            "test": rows,
        }
        if args.dataset == "omniglot":
            from metasparse.data.omniglot_runs import read_runs, write_runs

            alphabets = runs_alphabets(cfg.data.options.get("split_scheme", "vinyals"))
            runs_dir = Path(tempfile.mkdtemp(prefix="omniglot_runs_"))
            write_runs(runs_dir, args.root, n_runs=20, ways=20, seed=0, alphabets=alphabets)
            errors = omniglot_runs_error(model, read_runs(runs_dir, 28), torch.device("cpu"))
            entry["omniglot_runs_error_rate"] = sum(errors) / len(errors)
            entry["omniglot_runs_per_run"] = errors
            entry["omniglot_runs_alphabets"] = alphabets
            print(f"{head:>17} 20 one-shot runs: error {entry['omniglot_runs_error_rate']:.2f}%")
        # read again just before writing: other runs may have recorded theirs meanwhile
        results = (
            json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
        )
        results[args.tag or head] = entry
        atomic_write_json(results_path, results)
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
