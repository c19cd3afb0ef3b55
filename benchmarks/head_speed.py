"""Forward+backward time of the group-sparse SVM head vs qpth SVM-CS and the paper's 5-step PGD.

All methods are timed interleaved (round-robin over repeats) in one process, so that load from
other processes hits them alike; the table reports medians, the ratio to qpth, and the relative
duality gap each method reaches (qpth: its certified gap on the λ1 = 0 problem it solves).

    python benchmarks/head_speed.py                       # full grid, CPU, markdown to stdout
    python benchmarks/head_speed.py --repeats 3 --ours-threads 2 \
        --out /tmp/head_speed.md --json benchmarks/results/head_speed_cpu.json
    python benchmarks/head_speed.py --device cuda --out benchmarks/head_speed_gpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from metasparse.solvers import lambda_max, products, solve_group_sparse_svm
from metasparse.solvers.pgd_baseline import pgd_group_sparse_svm
from metasparse.utils import atomic_write_bytes, cpu_name

# the iteration-capped rows are uncertified on purpose
warnings.filterwarnings("ignore", "group-sparse SVM: some episodes", RuntimeWarning)
LAM2 = 1000.0
TAU = 1.0 / LAM2


def _episodes(tasks: int, way: int, shot: int, p: int, n_query: int, device: str, seed: int):
    """Post-ReLU Gaussian features (like unpooled backbone outputs), balanced labels."""
    g = torch.Generator().manual_seed(seed)
    support = torch.relu(torch.randn(tasks, way * shot, p, generator=g)).to(device)
    query = torch.relu(torch.randn(tasks, n_query, p, generator=g)).to(device)
    labels = torch.arange(way).repeat_interleave(shot).expand(tasks, -1).contiguous().to(device)
    return support, query, labels


def _ours(support, query, labels, way: int, ratio: float, **opts):
    """Our head, certified at 1e-5 (forward and backward of ``‖query @ Wᵀ‖²``)."""
    res = solve_group_sparse_svm(
        support, labels, way, lam_ratio=ratio, lam2=LAM2, tau=TAU, tol=1e-5, **opts
    )
    (query @ res.weights.transpose(1, 2)).square().sum().backward()
    return res


def _info(res) -> dict:
    """The row fields of one solve of our head."""
    return {
        "gap": float(res.gap.max()),
        "used": float(res.features_used.mean()),
        "iters": float(res.iterations.double().mean()),
    }


def _rounds(round_ms: float, repeats: int, min_seconds: float) -> int:
    """Repeats for a round of ``round_ms``: at least ``repeats``, more for short rounds so that
    the medians rest on at least ``min_seconds`` of timing (at most 25)."""
    return max(repeats, min(25, math.ceil(1e3 * min_seconds / max(round_ms, 1e-3))))


def _timed(fn: Callable[[], dict], device: str) -> tuple[float, dict]:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    info = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3, info


def run(args: argparse.Namespace) -> list[dict]:
    """Time every method on every configuration; return one row per (config, method)."""
    # imported here, not at the top, so that the helpers above import without qpth
    # (benchmarks/gpu_check.py reports a missing qpth in its rows instead of failing)
    from metasparse.heads.svm_cs import SVMCSHead

    rows = []
    for shot in sorted(args.shots, reverse=True):
        for p in args.dims:
            support, query, labels = _episodes(args.tasks, args.way, shot, p, 30, args.device, 0)
            qp = SVMCSHead(C_reg=1.0 / LAM2, jitter=1.0, learn_scale=False).to(args.device)

            def make(
                method: str, ratio: float, support=support, query=query, labels=labels, qp=qp
            ) -> Callable[[], dict]:
                def call() -> dict:
                    # fresh leaves on the episode's storage: a clone() of X (38 MB at p = 16000)
                    # costs ~40 ms in page faults, the same for every method, and is not the
                    # head's work
                    s = support.detach().requires_grad_(True)
                    q = query.detach().requires_grad_(True)
                    if method == "qpth SVM-CS (λ1=0)":
                        logits, st = qp(q, s, labels, args.way)
                        info = {"gap": st["qp_rel_gap"], "used": 1.0, "iters": 15}
                    elif method.startswith("PGD"):
                        lam1 = ratio * lambda_max(s, labels, args.way, tau=TAU)
                        W, gap = pgd_group_sparse_svm(s, labels, args.way, lam1, LAM2, TAU)
                        logits = q @ W.transpose(1, 2)
                        used = float((W.detach().norm(dim=1) > 0).double().mean())
                        info = {"gap": float(gap.max()), "used": used, "iters": 5}
                    elif method == MATMUL_ROW:
                        products.ONEDNN = False  # every product of the solve through matmul
                        try:
                            return _info(_ours(s, q, labels, args.way, ratio))
                        finally:
                            products.ONEDNN = True  # the row exists only where it was on
                    else:
                        max_iter = int(method.split()[1]) if " it" in method else 5000
                        # our head uses no batched LU, so it may use more threads than qpth;
                        # --threads 0 (PyTorch's default for every method) never sets a count
                        threads = args.ours_threads if method.endswith("threads") else args.threads
                        if threads:
                            torch.set_num_threads(threads)
                        try:
                            return _info(_ours(s, q, labels, args.way, ratio, max_iter=max_iter))
                        finally:
                            if args.threads:
                                torch.set_num_threads(args.threads)
                    logits.square().sum().backward()
                    return info

                return call

            methods = [("qpth SVM-CS (λ1=0)", 0.0)]
            for ratio in args.ratios:
                methods += [
                    ("ours (gap ≤ 1e-5)", ratio),
                    ("ours 5 it", ratio),
                    ("PGD 5 steps (paper)", ratio),
                ]
                if args.ours_threads > 1:
                    methods.append((f"ours (gap ≤ 1e-5), {args.ours_threads} threads", ratio))
                if products.ONEDNN and products.applies(support):
                    methods.append((MATMUL_ROW, ratio))
            times: dict[int, list[float]] = {i: [] for i in range(len(methods))}
            infos: dict[int, dict] = {}
            fns = [make(m, r) for m, r in methods]
            warm = 0.0
            for i, f in enumerate(fns):  # warm-up (and first info)
                ms, infos[i] = _timed(f, args.device)
                warm += ms
            for _ in range(_rounds(warm, args.repeats, args.min_seconds)):
                for i, f in enumerate(fns):
                    ms, infos[i] = _timed(f, args.device)
                    times[i].append(ms)
            qp_ms = statistics.median(times[0])
            # "at PGD's time": the most iterations whose median time stays within PGD's, each
            # cap timed alternately with PGD (drift between the two hits both alike) and every
            # cap timed (a noisy cap must not hide the larger ones)
            for ratio in args.ratios:
                pgd = make("PGD 5 steps (paper)", ratio)
                best = None
                for k in (1, 2, 3, 5, 8, 10, 12, 15, 20, 30):
                    f = make(f"ours {k} it", ratio)
                    pair = _timed(f, args.device)[0] + _timed(pgd, args.device)[0]
                    runs, budget = [], []
                    for _ in range(_rounds(pair, args.repeats, args.min_seconds / 4)):
                        runs.append(_timed(f, args.device))
                        budget.append(_timed(pgd, args.device)[0])
                    ms = statistics.median(t for t, _ in runs)
                    if ms <= statistics.median(budget):
                        best = (k, ms, runs[-1][1])
                if best is not None:
                    k, ms, info = best
                    methods.append((f"ours, ≤ {k} it (within PGD's time)", ratio))
                    times[len(methods) - 1] = [ms]
                    infos[len(methods) - 1] = info
            order = sorted(range(len(methods)), key=lambda i: methods[i][1])  # stable: by ratio
            for i in order:
                m, r = methods[i]
                med = statistics.median(times[i])
                rows.append(
                    {
                        "shot": shot,
                        "p": p,
                        "ratio": r,
                        "method": m,
                        "ms": med,
                        "vs_qpth": med / qp_ms,
                        "gap": infos[i]["gap"],
                        "used": infos[i]["used"],
                        "iters": infos[i]["iters"],
                    }
                )
                print(rows[-1], flush=True)
    return rows


# our head with every product through torch.matmul (MKL on the CPU) instead of oneDNN
# (metasparse.solvers.products): a row where oneDNN takes part, and a --compare variant
MATMUL_ROW = "ours, torch.matmul products"
VARIANTS = {
    "vmfista, rank 8 (default)": {"method": "vmfista", "rank": 8},
    "vmfista, torch.matmul products": {"method": "vmfista", "onednn": False},
    "vmfista, fixed metric scale": {"method": "vmfista", "adaptive": False},
    "vmfista, no ridge start": {"method": "vmfista", "ridge_start": 0},
    "vmfista, rank 2": {"method": "vmfista", "rank": 2},
    "vmfista, no working set": {"method": "vmfista", "working_set": False},
    "FISTA + restart (scalar metric)": {"method": "fista"},
    "plain PGD": {"method": "pgd", "max_iter": 1000},
}


def compare_solvers(args: argparse.Namespace) -> str:
    """Interleaved fwd+bwd timing of solver variants (same problem, same stopping rule)."""
    lines = [
        "| shot | p | λ1/λ_max | solver variant | fwd+bwd ms | max rel. gap | mean iters |",
        "|---:|---:|---:|---|---:|---:|---:|",
    ]
    for shot in args.shots:
        for p in args.dims:
            support, query, labels = _episodes(args.tasks, args.way, shot, p, 30, args.device, 0)
            for ratio in args.ratios:
                times: dict[str, list[float]] = {v: [] for v in VARIANTS}
                infos: dict[str, dict] = {}
                for rep in range(args.repeats + 1):
                    for name, opts in VARIANTS.items():
                        s = support.clone().requires_grad_(True)

                        def call(s=s, opts=opts, ratio=ratio, labels=labels, query=query) -> dict:
                            opts, prev = dict(opts), products.ONEDNN
                            products.ONEDNN = prev and opts.pop("onednn", True)
                            try:
                                return _info(_ours(s, query, labels, args.way, ratio, **opts))
                            finally:
                                products.ONEDNN = prev

                        ms, infos[name] = _timed(call, args.device)
                        if rep > 0:
                            times[name].append(ms)
                for name in VARIANTS:
                    med = statistics.median(times[name])
                    lines.append(
                        f"| {shot} | {p} | {ratio:g} | {name} | {med:.0f} | "
                        f"{infos[name]['gap']:.1e} | {infos[name]['iters']:.0f} |"
                    )
                    print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """The result table with the machine and command."""
    dev = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} thread(s)"
    )
    lines = [
        f"Machine: {dev}; torch {torch.__version__}; {args.tasks} episodes of {args.way}-way, "
        f"30 queries, λ2 = {LAM2:g}, τ = {TAU:g}; median of ≥ {args.repeats} interleaved "
        f"repeats (≥ {args.min_seconds:g} s of timing per configuration).",
        "",
        "| shot | p | λ1/λ_max | method | fwd+bwd ms | × qpth | max rel. gap | iters | "
        "features used |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shot']} | {r['p']} | {r['ratio']:g} | {r['method']} | {r['ms']:.0f} | "
            f"{r['vs_qpth']:.2f} | {r['gap']:.1e} | {r['iters']:.0f} | {r['used']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse arguments, run, print (and optionally write) the markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5, 15])
    ap.add_argument("--dims", type=int, nargs="+", default=[2560, 16000])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1, 0.5])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=2.0,
        help="short configurations repeat until their medians rest on this much timing",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for every method (qpth's batched LU breaks after "
        "torch.set_num_threads(n > 1)); 0: never call set_num_threads, so every method, qpth "
        "included, uses PyTorch's default (all cores)",
    )
    ap.add_argument(
        "--ours-threads",
        type=int,
        default=0,
        help="also time our head (certified) with this many threads (it uses no batched LU)",
    )
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--json", default=None, help="also write the raw rows (and machine) here")
    ap.add_argument(
        "--compare",
        action="store_true",
        help="compare solver variants of the group-sparse head instead",
    )
    args = ap.parse_args()
    if args.threads < 0 or (args.threads == 0 and args.ours_threads):
        raise ValueError(
            "--threads must be >= 0, and --threads 0 (PyTorch's default for every method) "
            "cannot be combined with --ours-threads: setting a thread count would break qpth"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available; use --device cpu")
    if args.compare:
        md = compare_solvers(args)
    else:
        rows = run(args)
        md = to_markdown(rows, args)
        if args.json:
            meta = {
                "machine": md.splitlines()[0],
                "date": time.strftime("%Y-%m-%d"),
                "args": vars(args),
                "rows": rows,
            }
            text = json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
            atomic_write_bytes(args.json, text.encode())
    print(md)
    if args.out:
        atomic_write_bytes(args.out, md.encode())


if __name__ == "__main__":
    main()
