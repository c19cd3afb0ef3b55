"""The head's share of a training step at many ways, on a trained backbone's real features.

Usage (from the repo root):

    python benchmarks/head_share.py --checkpoint runs/omniglot/checkpoints/best.pt \\
        --root ../shared/data/omniglot --ways 5 20 60 --shot 5 --query 5 --batches 4 \\
        --json benchmarks/results/head_share.json

For each way it draws training episodes from the checkpoint's train split and times, on the same
batch and in interleaved order, the backbone's forward + backward (through the features the head
hands back) and the head's forward + backward (the solve and its implicit gradient), as
``Trainer.step`` splits them. The share is head / (head + backbone); the group-sparse head's
solver statistics (iterations, certified gap) are reported beside it. ``--head`` and
``--head-option`` swap the head on the same trained backbone.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.data import build_dataset
from metasparse.data.episodes import episode_loader
from metasparse.heads import build_head
from metasparse.solvers import tuning
from metasparse.utils import atomic_write_json, positive_int


def time_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], way: int) -> dict[str, Any]:
    """Seconds of the backbone (forward + backward) and of the head (forward + backward)."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    f_s, f_q = model.embed(batch["support"], batch["query"])
    t1 = time.perf_counter()
    h_s, h_q = f_s.detach().requires_grad_(True), f_q.detach().requires_grad_(True)
    logits, stats = model.head(h_q, h_s, batch["support_labels"], way)
    t2 = time.perf_counter()
    F.cross_entropy(logits.reshape(-1, way), batch["query_labels"].reshape(-1)).backward()
    t3 = time.perf_counter()
    torch.autograd.backward([f_s, f_q], [h_s.grad, h_q.grad])
    t4 = time.perf_counter()
    return {
        "backbone_s": (t1 - t0) + (t4 - t3),
        "head_forward_s": t2 - t1,
        "head_backward_s": t3 - t2,
        "stats": {k: float(v) for k, v in stats.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--root", default=None, help="dataset folder (default: the checkpoint's)")
    p.add_argument("--ways", type=positive_int, nargs="+", default=[20, 60])
    p.add_argument("--shot", type=positive_int, default=5)
    p.add_argument("--query", type=positive_int, default=5)
    p.add_argument("--batches", type=positive_int, default=4)
    p.add_argument("--episodes-per-batch", type=positive_int, default=1)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--head", default=None, help="another head on the same backbone")
    p.add_argument("--head-option", action="append", default=[], help="key=value (YAML)")
    p.add_argument(
        "--prox-size", type=positive_int, default=None, help="override tuning.PROX_SIZE (r·K cap)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    if args.prox_size is not None:
        tuning.PROX_SIZE = args.prox_size
    ckpt = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(ckpt)
    if args.head:
        options = {}
        for item in args.head_option:
            key, _, value = item.partition("=")
            options[key] = yaml.safe_load(value)
        model.head = build_head(args.head, **options)
    model.train()
    d = cfg.data
    train_set = build_dataset(
        d.name, d.train_split, root=args.root or d.root, augment=False, **d.options
    )
    rows = []
    for way in args.ways:
        loader = episode_loader(
            train_set,
            way,
            args.shot,
            args.query,
            args.episodes_per_batch,
            args.batches + 1,
            seed=args.seed,
        )
        times = [time_step(model, batch, way) for batch in loader][1:]  # first: warm-up
        backbone = statistics.median(t["backbone_s"] for t in times)
        fwd = statistics.median(t["head_forward_s"] for t in times)
        bwd = statistics.median(t["head_backward_s"] for t in times)
        stats = {k: statistics.mean(t["stats"][k] for t in times) for k in times[0]["stats"]}
        rows.append(
            {
                "way": way,
                "shot": args.shot,
                "query": args.query,
                "images": args.episodes_per_batch * way * (args.shot + args.query),
                "backbone_ms": 1e3 * backbone,
                "head_forward_ms": 1e3 * fwd,
                "head_backward_ms": 1e3 * bwd,
                "head_share": (fwd + bwd) / (fwd + bwd + backbone),
                "head_stats": stats,
            }
        )
    head = type(model.head).__name__
    print(f"{head} on {args.checkpoint}, {args.batches} batches per way, {args.threads} thread(s)")
    print("| way | images | backbone ms | head fwd ms | head bwd ms | head share | iterations |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        its = r["head_stats"].get("iterations")
        print(
            f"| {r['way']} | {r['images']} | {r['backbone_ms']:.0f} | "
            f"{r['head_forward_ms']:.0f} | {r['head_backward_ms']:.0f} | "
            f"{100 * r['head_share']:.0f} % | {'-' if its is None else f'{its:.0f}'} |"
        )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "checkpoint": args.checkpoint,
                "head": head,
                "head_options": args.head_option,
                "threads": args.threads,
                "prox_size": tuning.PROX_SIZE,
                "batches": args.batches,
                "machine": {"torch": torch.__version__, "platform": platform.platform()},
                "rows": rows,
            },
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
