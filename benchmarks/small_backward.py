"""Dense against CG implicit backward of the group-sparse SVM on small episodes: where "auto"
switches (``tuning.CG_MIN_SIZE`` and ``tuning.DENSE_MAX_COORDS``).

The dense backward forms the KKT matrix on the active faces (up to n·K coordinates) and
factorises it, a cost that grows as (n·K)³ whatever p is; CG costs two passes over the
(n × p) support per product. Each shape is one episode of ReLU Gaussian features around
random class means, solved once per path to the default tolerance; the time is the median
over ``--repeats`` of the backward alone, after one warm-up, with one torch thread. The two
gradients are compared (relative difference), and the path "auto" takes is named::

    python benchmarks/small_backward.py --json benchmarks/results/small_backward.json
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from datetime import UTC, datetime
from typing import Any

import torch

from metasparse.solvers import solve_group_sparse_svm
from metasparse.solvers.svm.backward import use_cg_backward
from metasparse.solvers.svm.problem import DEFAULT_TAU
from metasparse.utils import atomic_write_json, cpu_name

# (way, shot, p): n·K from 25 to 4212, n·K·p up to 2e4 (the old "tiny" bound on its own)
SHAPES = [
    (5, 1, 64),
    (5, 5, 32),
    (5, 5, 128),
    (5, 15, 16),
    (20, 1, 50),
    (10, 5, 40),
    (20, 5, 8),
    (20, 5, 4),
    (18, 13, 4),
]


def backward_ms(way: int, shot: int, p: int, ratio: float, path: str, reps: int) -> tuple:
    """Median backward time (ms) of ``path`` and the support gradient it returns."""
    gen = torch.Generator().manual_seed(way * 1000 + shot * 10 + p)
    labels = torch.arange(way).repeat_interleave(shot).unsqueeze(0)
    means = torch.randn(way, p, generator=gen)  # class structure, so that features are used
    X = (means[labels] + 0.5 * torch.randn(1, way * shot, p, generator=gen)).relu()
    upstream = None
    times = []
    for _ in range(reps + 1):
        support = X.clone().requires_grad_(True)
        res = solve_group_sparse_svm(support, labels, way, lam_ratio=ratio, backward=path)
        if upstream is None:
            upstream = torch.randn(res.weights.shape, generator=gen)
        start = time.perf_counter()
        (res.weights * upstream).sum().backward()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times[1:]), support.grad, float(res.gap.max())


def main() -> None:
    """Time both paths on every shape and ratio; print a markdown table, optionally JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", default=None, help="way,shot,p;… instead of the built-in grid")
    ap.add_argument("--json", default=None, help="also write the rows (and machine) here")
    args = ap.parse_args()
    shapes = SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", "group-sparse SVM: some episodes", RuntimeWarning)
    rows: list[dict[str, Any]] = []
    head = [
        "way",
        "shot",
        "p",
        "n·K",
        "n·K·p",
        "λ1/λ_max",
        "dense_ms",
        "CG_ms",
        "dense/CG",
        "grad_rel_diff",
        "auto",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for way, shot, p in shapes:
        n = way * shot
        for ratio in args.ratios:
            dense, g_dense, gap_d = backward_ms(way, shot, p, ratio, "dense", args.repeats)
            cg, g_cg, gap_c = backward_ms(way, shot, p, ratio, "cg", args.repeats)
            diff = float((g_dense - g_cg).norm() / g_dense.norm().clamp_min(1e-30))
            auto = "CG" if use_cg_backward("auto", DEFAULT_TAU, n, way, p) else "dense"
            row = {
                "way": way,
                "shot": shot,
                "p": p,
                "coords": n * way,
                "size": n * way * p,
                "ratio": ratio,
                "dense_ms": dense,
                "cg_ms": cg,
                "dense_over_cg": dense / cg,
                "grad_rel_diff": diff,
                "gap": max(gap_d, gap_c),
                "auto": auto,
            }
            rows.append(row)
            print(
                f"| {way} | {shot} | {p} | {n * way} | {n * way * p} | {ratio:g} | {dense:.1f} "
                f"| {cg:.1f} | {dense / cg:.2f} | {diff:.1e} | {auto} |",
                flush=True,
            )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "settings": {k: v for k, v in vars(args).items() if k != "json"},
                "machine": {
                    "processor": cpu_name(),
                    "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                },
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
