"""Meta-train the demo's recipe with one head setting and meta-test it: the head as a learner.

Each call trains Conv-4 on the built-in glyphs exactly as ``metasparse demo`` does (same seed,
steps, episodes), with the head options given on the command line, then tests 5-way 1/5-shot
on the same fixed held-out episodes, and adds one row to ``benchmarks/results/head_learning.json``
under ``--tag``. Settings compared there differ only in what the options say.

    python benchmarks/head_learning.py --head group_sparse_svm --tag gs_0.1 \\
        --option lam_ratio=0.1 --option lam1_grad=lam_max
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.config import apply_override
from metasparse.data import build_dataset
from metasparse.demo import demo_config, meta_test
from metasparse.training import train
from metasparse.utils import atomic_write_json, cpu_name

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks/results/head_learning.json"


def table(results: dict[str, dict]) -> str:
    """Markdown table of the recorded rows: one line per setting (tags that differ only by a
    ``_seedN`` suffix are one setting), accuracy per seed and the mean over seeds."""
    groups: dict[str, list[tuple[int, dict]]] = {}
    for tag, row in results.items():
        base, _, seed = tag.partition("_seed")
        groups.setdefault(base, []).append((int(seed or 0), row))
    lines = [
        "| setting | head options | seeds | 5-way 1-shot | 5-way 5-shot | mean 1 / 5-shot | "
        "features used 1 / 5-shot |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for base, rows in groups.items():
        rows.sort(key=lambda r: r[0])
        acc = {s: [r["test"][i]["accuracy"] for _, r in rows] for i, s in enumerate((1, 5))}
        ci = {s: [r["test"][i]["ci95"] for _, r in rows] for i, s in enumerate((1, 5))}
        cells = {
            s: ", ".join(f"{a:.2f} ± {c:.2f}" for a, c in zip(acc[s], ci[s], strict=True))
            for s in (1, 5)
        }
        used = [
            sum(r["test"][i]["head_stats"].get("features_used", 1.0) for _, r in rows) / len(rows)
            for i in range(2)
        ]
        mean = [sum(acc[s]) / len(acc[s]) for s in (1, 5)]
        opts = ", ".join(f"{k}={v}" for k, v in rows[0][1]["options"].items())
        extra = " ".join(rows[0][1].get("overrides") or [])
        lines.append(
            f"| {base} | {opts}{' ' + extra if extra else ''} | "
            f"{','.join(str(s) for s, _ in rows)} | {cells[1]} | {cells[5]} | "
            f"{mean[0]:.2f} / {mean[1]:.2f} | {used[0]:.0%} / {used[1]:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Train, test and record one head setting (or print the table of recorded ones)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--table",
        nargs="?",
        const=str(RESULTS),
        help="print the markdown table of a results file (default: the committed one) and exit",
    )
    p.add_argument("--head", help="the head to train (required unless --table)")
    p.add_argument("--tag", help="the row's name in the results file (required unless --table)")
    p.add_argument("--option", action="append", default=[], help="head option key=value (YAML)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides section.key=value")
    p.add_argument("--steps", type=int, default=150, help="training steps (the demo's default)")
    p.add_argument("--episodes", type=int, default=500, help="test episodes per shot")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--output", default="runs/head_learning")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.table).read_text(encoding="utf-8"))))
        return
    if not (args.head and args.tag):
        p.error("--head and --tag are required to train a setting")
    torch.set_num_threads(args.threads)
    options = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--option takes key=value, got {item!r}")
        options[key] = yaml.safe_load(value)
    cfg = demo_config(args.head, Path(args.output) / args.tag, args.steps, args.seed)
    cfg.model.head_options = {**cfg.model.head_options, **options}
    for item in args.set:
        apply_override(cfg, item)
    start = time.perf_counter()
    train(cfg, progress=False)
    train_s = time.perf_counter() - start
    ckpt = load_checkpoint(cfg.run_dir / "checkpoints" / "best.pt")
    model, _ = model_from_checkpoint(ckpt)
    row = {
        "head": args.head,
        "options": cfg.model.head_options,
        "overrides": args.set,
        "steps": args.steps,
        "seed": args.seed,
        "train_seconds": train_s,
        "threads": args.threads,
        "machine": cpu_name(),
        "train_loss_curve": [h["train_means"].get("loss") for h in ckpt["history"]],
        "val_curve": [h["val_accuracy"] for h in ckpt["history"]],
        "test": meta_test(model, build_dataset("glyphs", "test"), args.episodes),
    }
    for r in row["test"]:
        print(f"{args.tag}: 5-way {r['shot']}-shot {r['accuracy']:.2f} ± {r['ci95']:.2f}")
    path = Path(args.results)
    results = (
        json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    )  # others may have written
    results[args.tag] = row
    atomic_write_json(path, results)


if __name__ == "__main__":
    main()
