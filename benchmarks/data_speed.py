"""Episode-loader throughput vs. training step time on miniImageNet (results: data_speed.md).

Measures episodes/s of ``episode_loader`` for 5-way 15-shot 6-query batches of 8 episodes on the
augmented miniImageNet train split with 0/1/2 workers, and the forward+backward time of Conv-4
and ResNet-12 on the same batch (a prototype loss stands in for the head). ResNet-12 is timed on
``--resnet-episodes`` episodes and scaled linearly to 8 (a full CPU step takes minutes).

    python benchmarks/data_speed.py --root ../shared/data/miniimagenet
    python benchmarks/data_speed.py --batches 4 --json benchmarks/results/data_speed.json

``--json PATH`` also writes every printed figure as JSON: ``settings`` (the arguments and the
batch shape), ``machine`` (processor, torch version and thread count of the model step),
``timestamp`` (UTC), ``dataset`` (images, classes, build seconds) and ``rows``, one per table
row (the loader rows with their first-batch time).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from metasparse.backbones import build_backbone
from metasparse.data import build_dataset
from metasparse.data.episodes import episode_loader
from metasparse.utils import atomic_write_json, cpu_name, positive_int

WAY, SHOT, QUERY, TASKS = 5, 15, 6, 8


def loader_rate(dataset, workers: int, batches: int) -> tuple[float, float]:
    """(episodes/s after the first batch, seconds to the first batch) for ``workers`` workers."""
    loader = episode_loader(
        dataset, WAY, SHOT, QUERY, TASKS, batches + 1, seed=0, num_workers=workers
    )
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = sum(1 for _ in it)
    return n * TASKS / (time.perf_counter() - t1), first


def step_time(name: str, batch: dict, tasks: int, repeats: int) -> float:
    """Median seconds of one forward+backward over ``tasks`` episodes of ``batch``."""
    torch.manual_seed(0)
    net = build_backbone(name)
    net.train()
    support = batch["support"][:tasks]
    query = batch["query"][:tasks]
    ys, yq = batch["support_labels"][:tasks], batch["query_labels"][:tasks]
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        n_s, n_q = support.shape[1], query.shape[1]
        feats = net(torch.cat([support.flatten(0, 1), query.flatten(0, 1)]))
        fs = feats[: tasks * n_s].view(tasks, n_s, -1)
        fq = feats[tasks * n_s :].view(tasks, n_q, -1)
        onehot = F.one_hot(ys, WAY).float()
        protos = onehot.transpose(1, 2) @ fs / onehot.sum(1).unsqueeze(-1)
        logits = -(torch.cdist(fq, protos) ** 2)
        F.cross_entropy(logits.flatten(0, 1), yq.flatten()).backward()
        net.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[len(times[1:]) // 2]


def _machine() -> dict:
    """Processor, torch version and torch's current thread count (for the JSON file)."""
    return {
        "processor": cpu_name(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    default_root = Path(os.environ.get("METASPARSE_SHARED_DATA", "../shared/data")) / "miniimagenet"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(default_root))
    p.add_argument(
        "--batches", type=positive_int, default=6, help="timed batches per worker setting"
    )
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads for the model step"
    )
    p.add_argument("--resnet-episodes", type=positive_int, default=1)
    p.add_argument("--json", default=None, help="also write the raw figures (and machine) here")
    args = p.parse_args()

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train = build_dataset("miniimagenet", "train", root=args.root, augment=True)
    built = time.perf_counter() - t0
    print(
        f"dataset: {len(train)} images, {train.num_classes} classes, "
        f"built in {built:.1f} s (decode cache: $METASPARSE_CACHE)"
    )
    plain = build_dataset("miniimagenet", "train", root=args.root, augment=False)
    rows, records = [], []  # the table's rows, and the same with named fields for --json
    for workers in args.workers:
        for label, ds in (("augmented", train), ("no augmentation", plain)):
            if label == "no augmentation" and workers != 0:
                continue
            rate, first = loader_rate(ds, workers, args.batches)
            rows.append((f"loader, {workers} worker(s), {label}", rate, TASKS / rate, first))
            records.append(
                {
                    "what": rows[-1][0],
                    "kind": "loader",
                    "workers": workers,
                    "augment": label == "augmented",
                    "episodes_per_s": rate,
                    "s_per_batch": TASKS / rate,
                    "first_batch_s": first,
                }
            )
            print(
                f"{rows[-1][0]}: {rate:.1f} episodes/s ({TASKS / rate:.2f} s/batch), "
                f"first batch {first:.2f} s"
            )
    batch = next(iter(episode_loader(train, WAY, SHOT, QUERY, TASKS, 1, seed=1)))
    torch.set_num_threads(args.threads)
    for name, tasks, repeats in (("conv4", TASKS, 2), ("resnet12", args.resnet_episodes, 1)):
        sec = step_time(name, batch, tasks, repeats) * TASKS / tasks
        note = "" if tasks == TASKS else f" (timed on {tasks} episode(s), scaled ×{TASKS // tasks})"
        rows.append(
            (f"{name} forward+backward, {args.threads} thread(s){note}", TASKS / sec, sec, 0)
        )
        records.append(
            {
                "what": rows[-1][0],
                "kind": "step",
                "backbone": name,
                "threads": args.threads,
                "episodes_timed": tasks,
                "episodes_per_s": TASKS / sec,
                "s_per_batch": sec,
            }
        )
        print(f"{rows[-1][0]}: {sec:.2f} s/batch = {TASKS / sec:.2f} episodes/s")
    print("\n| what | episodes/s | s per batch of 8 |\n| --- | --- | --- |")
    for what, rate, sec, _ in rows:
        print(f"| {what} | {rate:.1f} | {sec:.2f} |")
    if args.json:
        settings = vars(args) | {"way": WAY, "shot": SHOT, "query": QUERY, "tasks": TASKS}
        atomic_write_json(
            args.json,
            {
                "settings": settings | {"loader_threads": 1},
                "machine": _machine(),
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "dataset": {"images": len(train), "classes": train.num_classes, "build_s": built},
                "rows": records,
            },
        )


if __name__ == "__main__":
    main()
