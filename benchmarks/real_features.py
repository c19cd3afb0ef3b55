"""The group-sparse solver on features of real images: fixed vs adaptive metric scale.

The synthetic benchmark (head_speed.py) uses post-ReLU Gaussian features. Here the episodes are
real miniImageNet test images, embedded by a randomly initialised backbone (eval mode, seeded):
real image statistics, no training run needed. Each batch of episodes is solved to the same
certified gap with ``adaptive=False`` and ``adaptive=True``, alternately (forward only), and the
table reports iterations, the fastest of the repeats and the gaps reached.

With ``--vs-qpth``, each batch is instead timed forward+backward (of ``‖logits‖²`` on the
episode's own query features) for our head, certified at 1e-5, and for the qpth SVM-CS head
(the λ1 = 0 problem, as in ``head_speed.py``), alternately, and the table reports the ratio.

    python benchmarks/real_features.py --root ../shared/data/miniimagenet
    python benchmarks/real_features.py --backbones conv4 --shots 1 --batches 1 --tasks 2
    python benchmarks/real_features.py --vs-qpth --backbones resnet12 --shots 5 15 \
        --ratios 0.01 0.1 0.5 --batches 1
    python benchmarks/real_features.py --json benchmarks/results/real_features.json

``--json PATH`` also writes every printed figure as JSON: ``settings`` (the arguments, ``vs_qpth``
telling which table), ``machine`` (processor, torch version and thread count), ``timestamp``
(UTC) and ``rows``, one per table row: times in ms (the fastest repeat), mean and max
iterations, max gaps, each per variant (``_fixed``/``_adaptive``, or ``ours_``/``qpth_``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from metasparse.backbones import build_backbone
from metasparse.data import build_dataset
from metasparse.data.episodes import episode_loader
from metasparse.solvers import solve_group_sparse_svm
from metasparse.utils import atomic_write_json, cpu_name

REPO = Path(__file__).resolve().parents[1]
LAM2 = 1000.0  # λ2 and τ = 1/λ2 as in head_speed.py (the solver's defaults)


def _solve(feats: torch.Tensor, labels: torch.Tensor, way: int, ratio: float, adaptive: bool):
    t0 = time.perf_counter()
    res = solve_group_sparse_svm(feats, labels, way, lam_ratio=ratio, tol=1e-5, adaptive=adaptive)
    return (time.perf_counter() - t0) * 1e3, res


def _embedded(args: argparse.Namespace, n_query: int):
    """Every batch of test episodes, embedded: ``(backbone, shot, batch index, support
    features, query features, support labels)``, the features (tasks, n, p)."""
    data = build_dataset("miniimagenet", "test", root=args.root)
    for name in args.backbones:
        torch.manual_seed(args.seed)
        backbone = build_backbone(name).eval()
        for shot in args.shots:
            loader = episode_loader(
                data, args.way, shot, n_query, args.tasks, args.batches, args.seed
            )
            for b, batch in enumerate(loader):
                with torch.no_grad():
                    s, q = (
                        backbone(batch[k].flatten(0, 1)).flatten(1).reshape(*batch[k].shape[:2], -1)
                        for k in ("support", "query")
                    )
                yield name, shot, b, s, q, batch["support_labels"]


def run(args: argparse.Namespace) -> tuple[str, list[dict]]:
    """Markdown table: one row per (backbone, shot, batch, λ1/λ_max); and the rows' figures."""
    torch.set_num_threads(args.threads)
    lines = [
        "| backbone | p | shot | batch | λ1/λ_max | features used | iterations fixed → adaptive "
        "(mean/max) | forward ms fixed → adaptive | max gap fixed, adaptive |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    rows = []
    for name, shot, b, feats, _, labels in _embedded(args, 1):
        for ratio in args.ratios:
            times: dict[bool, list[float]] = {False: [], True: []}
            out = {}
            for _ in range(args.repeats):
                for adaptive in (False, True):
                    ms, out[adaptive] = _solve(feats, labels, args.way, ratio, adaptive)
                    times[adaptive].append(ms)
            f, a = out[False], out[True]

            def its(r) -> str:
                return f"{r.iterations.double().mean():.1f}/{int(r.iterations.max())}"

            lines.append(
                f"| {name} | {feats.shape[-1]} | {shot} | {b} | {ratio:g} | "
                f"{a.features_used.mean():.3f} | {its(f)} → {its(a)} | "
                f"{min(times[False]):.0f} → {min(times[True]):.0f} | "
                f"{f.gap.max():.1e}, {a.gap.max():.1e} |"
            )
            print(lines[-1], flush=True)
            rows.append(
                {
                    "backbone": name,
                    "p": feats.shape[-1],
                    "shot": shot,
                    "batch": b,
                    "ratio": ratio,
                    "features_used": float(a.features_used.mean()),  # the adaptive solve's
                    "iters_mean_fixed": float(f.iterations.double().mean()),
                    "iters_max_fixed": int(f.iterations.max()),
                    "iters_mean_adaptive": float(a.iterations.double().mean()),
                    "iters_max_adaptive": int(a.iterations.max()),
                    "ms_fixed": min(times[False]),
                    "ms_adaptive": min(times[True]),
                    "gap_fixed": float(f.gap.max()),
                    "gap_adaptive": float(a.gap.max()),
                }
            )
    return "\n".join(lines) + "\n", rows


def _ours_fb(s: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, way: int, ratio: float):
    """Forward+backward of our head (certified at 1e-5) on support ``s`` and query ``q``."""
    sg = s.detach().requires_grad_(True)
    t0 = time.perf_counter()
    res = solve_group_sparse_svm(
        sg, labels, way, lam_ratio=ratio, lam2=LAM2, tau=1.0 / LAM2, tol=1e-5
    )
    (q @ res.weights.transpose(1, 2)).square().sum().backward()
    return (time.perf_counter() - t0) * 1e3, res


def _qpth_fb(qp, s: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, way: int):
    """Forward+backward of the qpth SVM-CS head; returns the time and its certified gap."""
    sg, qg = s.detach().requires_grad_(True), q.detach().requires_grad_(True)
    t0 = time.perf_counter()
    logits, st = qp(qg, sg, labels, way)
    logits.square().sum().backward()
    return (time.perf_counter() - t0) * 1e3, float(st["qp_rel_gap"])


def vs_qpth(args: argparse.Namespace) -> tuple[str, list[dict]]:
    """Markdown table: fwd+bwd of our head against qpth's on the same real episodes; and the
    rows' figures."""
    from metasparse.heads.svm_cs import SVMCSHead

    torch.set_num_threads(args.threads)
    qp = SVMCSHead(C_reg=1.0 / LAM2, jitter=1.0, learn_scale=False)
    lines = [
        "| backbone | p | shot | batch | λ1/λ_max | features used | iterations (mean/max) | "
        "ours ms | qpth ms | × qpth | max gap ours, qpth |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    rows = []
    for name, shot, b, s, q, labels in _embedded(args, 15):
        _qpth_fb(qp, s, q, labels, args.way)  # warm-up
        for ratio in args.ratios:
            mine, theirs = [], []
            for _ in range(args.repeats):
                ms, res = _ours_fb(s, q, labels, args.way, ratio)
                mine.append(ms)
                ms, qgap = _qpth_fb(qp, s, q, labels, args.way)
                theirs.append(ms)
            m, t = min(mine), min(theirs)
            lines.append(
                f"| {name} | {s.shape[-1]} | {shot} | {b} | {ratio:g} | "
                f"{res.features_used.mean():.3f} | {res.iterations.double().mean():.1f}/"
                f"{int(res.iterations.max())} | {m:.0f} | {t:.0f} | {m / t:.2f} | "
                f"{res.gap.max():.1e}, {qgap:.1e} |"
            )
            print(lines[-1], flush=True)
            rows.append(
                {
                    "backbone": name,
                    "p": s.shape[-1],
                    "shot": shot,
                    "batch": b,
                    "ratio": ratio,
                    "features_used": float(res.features_used.mean()),
                    "iters_mean": float(res.iterations.double().mean()),
                    "iters_max": int(res.iterations.max()),
                    "ours_ms": m,
                    "qpth_ms": t,
                    "vs_qpth": m / t,
                    "ours_gap": float(res.gap.max()),
                    "qpth_gap": qgap,
                }
            )
    return "\n".join(lines) + "\n", rows


def main() -> None:
    """Parse arguments, run, print the table (and optionally write its figures as JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("METASPARSE_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--root", default=str(shared / "miniimagenet"), help="miniImageNet folder")
    ap.add_argument("--backbones", nargs="+", default=["resnet12", "conv4"])
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.5])
    ap.add_argument("--way", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=8, help="episodes per batch")
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--vs-qpth",
        action="store_true",
        help="time fwd+bwd of our head (default settings) against the qpth SVM-CS head instead",
    )
    ap.add_argument("--json", default=None, help="also write the raw rows (and machine) here")
    args = ap.parse_args()
    md, rows = vs_qpth(args) if args.vs_qpth else run(args)
    print(md)
    if args.json:
        machine = {
            "processor": cpu_name(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        }
        atomic_write_json(
            args.json,
            {
                "settings": vars(args)
                | {"queries": 15 if args.vs_qpth else 1, "lam2": LAM2, "tau": 1.0 / LAM2},
                "machine": machine,
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
