"""``metasparse synthetic generalization|disentangle``: the paper's two synthetic studies."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

__all__ = ["add_parser"]


def _floats(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of floats."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _ints(text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of integers."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc


def _pairs(text: str) -> tuple[tuple[int, int], ...]:
    """Parse ``a-b,c-d`` into factor pairs."""
    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            a, b = (int(v) for v in item.split("-"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected pairs like 0-1,2-3, got {text!r}") from exc
        out.append((a, b))
    return tuple(out)


def _run_generalization(args: argparse.Namespace) -> int:
    """Run the generalization study and print its summary."""
    from metasparse.synthetic.generalization import (
        GeneralizationConfig,
        run_and_save,
        summarize_generalization,
    )

    torch.set_num_threads(1)
    cfg = GeneralizationConfig(
        n_factors=args.n_factors,
        ratios=args.ratios,
        sizes=args.sizes,
        n_test=args.n_test,
        seeds=args.seeds,
        noise_std=args.noise_std,
        mixing=args.mixing,
        cv_folds=args.cv_folds,
        n_alphas=args.n_alphas,
    )
    out = Path(args.output)
    start = time.perf_counter()
    rows = run_and_save(cfg, out)
    print(summarize_generalization(rows))
    print(
        f"wrote {out / 'results.csv'} and {out / 'r2_vs_n.png'} "
        f"({time.perf_counter() - start:.0f}s)"
    )
    return 0


def _run_disentangle(args: argparse.Namespace) -> int:
    """Run the bi-level disentanglement study and print one line per run plus a summary."""
    from metasparse.synthetic.disentangle import BilevelConfig, Setting, aggregate, run_study

    torch.set_num_threads(1)
    cfg = BilevelConfig(
        n_factors=args.n_factors,
        distribution=args.distribution,
        support_prob=args.support_prob,
        n_outputs=args.n_outputs,
        noise_std=args.noise_std,
        mixing=args.mixing,
        mixing_layers=args.mixing_layers,
        mixing_layer=args.mixing_layer,
        n_support=args.n_support,
        n_query=args.n_query,
        tasks_per_step=args.tasks_per_step,
        steps=args.steps,
        lr=args.lr,
        hidden=args.hidden,
        ridge_ratio=args.ridge_ratio,
        solver_tol=args.solver_tol,
        eval_samples=args.eval_samples,
    )
    known = {
        "independent": Setting("independent", 0.0),
        "correlated": Setting("correlated", args.correlation),
        "violated": Setting("violated", 0.0, args.coupled),
    }
    unknown = [s for s in args.settings if s not in known]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; choose from {sorted(known)}")
    settings = tuple(known[s] for s in args.settings)
    out = Path(args.output)
    start = time.perf_counter()
    heads = ("lasso", "ridge", "svm") if args.classification else ("lasso", "ridge")
    rows = run_study(
        cfg, settings, args.ratios, args.seeds, out, not args.no_tensorboard, heads=heads
    )
    print("\nmean MCC over seeds (Lasso per λ/λ_max | Ridge | Ridge+ICA):")
    mean = aggregate(rows, "mcc")
    ica = aggregate(rows, "mcc_ica")
    for st in settings:
        lasso = "  ".join(f"{r:g}: {mean[(st.name, 'lasso', r)][0]:.3f}" for r in args.ratios)
        ridge = mean[(st.name, "ridge", -1.0)][0]
        ridge_ica = ica[(st.name, "ridge", -1.0)][0]
        print(f"  {st.name:<12} {lasso} | {ridge:.3f} | {ridge_ica:.3f}")
    print(
        f"wrote {out / 'results.csv'}, results.json, mcc_vs_ratio.png, tensorboard/ "
        f"({time.perf_counter() - start:.0f}s)"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``synthetic generalization`` and ``synthetic disentangle``."""
    parser = subparsers.add_parser(
        "synthetic", help="the paper's synthetic studies (generalization, disentanglement)"
    )
    sub = parser.add_subparsers(dest="synthetic_command", metavar="STUDY")
    sub.required = True

    gen = sub.add_parser(
        "generalization",
        help="Lasso vs Ridge on disentangled vs entangled features (Figure 1)",
        description="Test R² of LassoCV / RidgeCV / least squares fitted on z (disentangled) "
        "or L z (entangled) for sparse regression tasks y = wᵀz + ε, ‖w‖ = 1, ε ~ N(0, σ²).",
    )
    gen.add_argument("--output", default="runs/synthetic_generalization", help="output folder")
    gen.add_argument("--seeds", type=int, default=10, help="seeds to average (default 10)")
    gen.add_argument("--n-factors", type=int, default=100, help="latent dimension m")
    gen.add_argument("--ratios", type=_floats, default=(0.05, 0.2, 0.8), help="ℓ/m values")
    gen.add_argument(
        "--sizes", type=_ints, default=(25, 50, 75, 100, 125, 150), help="training sizes n"
    )
    gen.add_argument("--n-test", type=int, default=2000, help="test samples")
    gen.add_argument("--noise-std", type=float, default=0.3, help="noise σ (signal variance 1)")
    gen.add_argument(
        "--mixing",
        choices=("orthogonal", "invertible"),
        default="orthogonal",
        help="entangling map L",
    )
    gen.add_argument("--cv-folds", type=int, default=5, help="LassoCV folds")
    gen.add_argument("--n-alphas", type=int, default=20, help="LassoCV regularization path size")
    gen.set_defaults(func=_run_generalization)

    dis = sub.add_parser(
        "disentangle",
        help="bi-level sparse multi-task learning recovers the factors (Problem 4)",
        description="Train an MLP encoder on the query loss of per-task Lasso (or Ridge) heads "
        "fitted on support sets, differentiating the Lasso implicitly; report MCC/DCI.",
    )
    dis.add_argument("--output", default="runs/synthetic_disentangle", help="output folder")
    dis.add_argument("--seeds", type=int, default=3, help="seeds per setting (default 3)")
    dis.add_argument(
        "--ratios",
        type=_floats,
        default=(0.03, 0.1, 0.3),
        help="inner λ/λ_max values for the Lasso heads",
    )
    dis.add_argument(
        "--settings",
        nargs="+",
        default=["independent", "correlated", "violated"],
        help="data regimes to run",
    )
    dis.add_argument(
        "--correlation",
        type=float,
        default=0.9,
        help="pairwise factor correlation of the 'correlated' setting",
    )
    dis.add_argument(
        "--coupled",
        type=_pairs,
        default=((0, 1), (1, 2), (2, 3)),
        help="factor pairs always used together in the 'violated' setting (chains join: the "
        "default ties factors 0-3 into one block)",
    )
    dis.add_argument("--n-factors", type=int, default=5, help="latent (and encoder) dimension")
    dis.add_argument(
        "--distribution",
        choices=("uniform", "gaussian"),
        default="uniform",
        help="factor marginals",
    )
    dis.add_argument(
        "--support-prob", type=float, default=0.3, help="probability that a task uses each factor"
    )
    dis.add_argument(
        "--n-outputs",
        type=int,
        default=1,
        help="outputs per task (>1: group-Lasso multi-output heads)",
    )
    dis.add_argument("--noise-std", type=float, default=0.1, help="label noise σ")
    dis.add_argument("--mixing", choices=("linear", "mlp"), default="mlp", help="map g")
    dis.add_argument("--mixing-layers", type=int, default=2, help="layers of the MLP mixing")
    dis.add_argument(
        "--mixing-layer",
        choices=("orthogonal", "triangular"),
        default="orthogonal",
        help="layer matrices of the MLP mixing",
    )
    dis.add_argument("--n-support", type=int, default=10, help="support samples per task")
    dis.add_argument("--n-query", type=int, default=20, help="query samples per task")
    dis.add_argument("--tasks-per-step", type=int, default=16, help="tasks per outer step")
    dis.add_argument("--steps", type=int, default=150, help="outer Adam steps")
    dis.add_argument("--lr", type=float, default=3e-3, help="outer learning rate")
    dis.add_argument("--hidden", type=int, default=64, help="encoder hidden width")
    dis.add_argument(
        "--ridge-ratio",
        type=float,
        default=0.1,
        help="Ridge α as a fraction of the mean feature variance",
    )
    dis.add_argument(
        "--solver-tol", type=float, default=1e-6, help="relative duality gap of the inner Lasso"
    )
    dis.add_argument("--eval-samples", type=int, default=2000, help="samples for MCC/DCI")
    dis.add_argument(
        "--classification",
        action="store_true",
        help="also run the classification variant: labels = argmax of --n-outputs task scores, "
        "group-sparse SVM heads at each ratio, cross-entropy query loss (needs --n-outputs >= 2)",
    )
    dis.add_argument("--no-tensorboard", action="store_true", help="skip TensorBoard logs")
    dis.set_defaults(func=_run_disentangle)
