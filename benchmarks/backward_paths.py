"""Time and peak memory of the group-sparse SVM head's implicit backwards (CG and dense).

The CG backward (matrix-free, τ > 0) is the default, except for sparse solutions with small
faces, which take one dense solve on the face ("CG only" turns that off); the dense one (the
KKT matrix on the active faces, formed explicitly) is what ``τ = 0`` always uses, since its
system may be singular there. Each configuration runs in a fresh process, so that its peak
resident memory (``ru_maxrss``) is its own; times are the median of ``--repeats`` forward +
backward calls after one warm-up call, on the 8-episode 5-way problems of ``head_speed.py``.

    python benchmarks/backward_paths.py                       # 15-shot, p = 2560 and 16000
    python benchmarks/backward_paths.py --shots 1 5 --ratio 0.5   # the direct face solve
    python benchmarks/backward_paths.py --json benchmarks/results/backward_paths.json

``--json PATH`` also writes every printed figure as JSON: ``settings`` (the arguments and the
problem), ``machine`` (processor, torch version, the configurations' torch thread count),
``timestamp`` (UTC) and ``rows``, one per table row (``backward``: the row's label; ``tau`` and
``mode``: what it ran with).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch

warnings.filterwarnings("ignore", "group-sparse SVM: some episodes", RuntimeWarning)

CASES = [  # (label, tau, backward)
    ("τ = 1e-3, default (CG, or direct on small faces)", 1e-3, "auto"),
    ("τ = 1e-3, CG only", 1e-3, "cg-only"),
    ("τ = 1e-3, dense", 1e-3, "dense"),
    ("τ = 0, dense (always)", 0.0, "auto"),
]
TASKS, WAY, QUERIES = 8, 5, 30  # the problems of head_speed.py


def _head_speed():
    """benchmarks/head_speed.py, imported from beside this script."""
    sys.path.insert(0, str(Path(__file__).parent))
    import head_speed

    return head_speed


def _child(shot: int, p: int, ratio: float, tau: float, backward: str, dtype: str, reps: int):
    """One configuration in this process: times (ms) and the peak RSS growth (MB)."""
    from metasparse.solvers import solve_group_sparse_svm, tuning

    hs = _head_speed()

    if backward == "cg-only":  # never the direct solve on small faces
        tuning.DIRECT_FACE, backward = 0, "auto"
    torch.set_num_threads(1)
    support, query, labels = hs._episodes(TASKS, WAY, shot, p, QUERIES, "cpu", 0)
    support, query = support.to(getattr(torch, dtype)), query.to(getattr(torch, dtype))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fwd, bwd = [], []
    for _ in range(reps + 1):
        s, q = support.detach().requires_grad_(True), query.detach().requires_grad_(True)
        t0 = time.perf_counter()
        res = solve_group_sparse_svm(
            s, labels, WAY, lam_ratio=ratio, lam2=hs.LAM2, tau=tau, tol=1e-5, backward=backward
        )
        loss = (q @ res.weights.transpose(1, 2)).square().sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        fwd.append(1e3 * (t1 - t0))
        bwd.append(1e3 * (t2 - t1))
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return {
        "fwd_ms": statistics.median(fwd[1:]),
        "bwd_ms": statistics.median(bwd[1:]),
        "peak_mb": peak,
        "gap": float(res.gap.max()),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    """Run every configuration in a subprocess, print a markdown table (and optionally write
    its figures as JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, nargs="+", default=[15])
    ap.add_argument("--dims", type=int, nargs="+", default=[2560, 16000])
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the raw rows (and machine) here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(**json.loads(args.child))))
        return
    print(
        f"8 episodes, 5-way, λ1/λ_max = {args.ratio:g}, {args.dtype}, one thread; median of "
        f"{args.repeats} after a warm-up; peak = growth of the process's peak RSS"
    )
    print("\n| shot | p | backward | fwd ms | bwd ms | peak MB | max rel. gap |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    rows, threads = [], set()
    for shot in args.shots:
        for p in args.dims:
            for label, tau, backward in CASES:
                spec = {
                    "shot": shot, "p": p, "ratio": args.ratio, "tau": tau,
                    "backward": backward, "dtype": args.dtype, "reps": args.repeats,
                }  # fmt: skip
                out = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"| {shot} | {p} | {label} | {r['fwd_ms']:.0f} | {r['bwd_ms']:.0f} | "
                    f"{r['peak_mb']:.0f} | {r['gap']:.1e} |",
                    flush=True,
                )
                threads.add(r.pop("threads"))
                rows.append({"shot": shot, "p": p, "backward": label, "tau": tau, "mode": backward})
                rows[-1].update(r)
    if args.json:
        from metasparse.utils import atomic_write_json, cpu_name

        settings = {k: v for k, v in vars(args).items() if k != "child"}
        machine = {
            "processor": cpu_name(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "torch_threads": threads.pop() if len(threads) == 1 else sorted(threads),
        }
        atomic_write_json(
            args.json,
            {
                "settings": settings
                | {"tasks": TASKS, "way": WAY, "queries": QUERIES, "lam2": _head_speed().LAM2},
                "machine": machine,
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
