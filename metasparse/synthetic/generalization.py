"""Generalization study (Figure 1 of Lachapelle et al.): sparse vs dense heads on disentangled vs
entangled features.

Per seed and ``ℓ/m``: ground-truth factors ``z ~ N(0, I_m)``, one regression task
``y = wᵀz + ε`` with ``ℓ`` nonzero standard-normal weights rescaled to ``‖w‖ = 1`` (unit signal
variance) and ``ε ~ N(0, σ²)``. Representations: ``z`` (disentangled) and ``Lz`` (entangled; ``L``
a Haar-random orthogonal matrix, or a random invertible one with ``--mixing invertible``). LassoCV
(``cv_folds``-fold, ``n_alphas`` values) and RidgeCV (efficient leave-one-out over
``ridge_alphas``) choose their regularization by cross-validation on the training set; least squares
(minimum-norm when ``n < m``) is the unregularized reference. Test R² on a large held-out set.
"""

from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metasparse.synthetic.data import random_invertible, random_orthogonal
from metasparse.utils import atomic_write_bytes, atomic_write_json

__all__ = [
    "CSV_COLUMNS",
    "GeneralizationConfig",
    "plot_generalization",
    "run_and_save",
    "run_generalization",
    "summarize_generalization",
]

CSV_COLUMNS = ("l_over_m", "n_samples", "representation", "estimator", "r2_mean", "r2_se")
ESTIMATORS = ("lasso", "ridge", "least_squares")
REPRESENTATIONS = ("disentangled", "entangled")


@dataclass(frozen=True)
class GeneralizationConfig:
    """Every knob of the study (all exposed as CLI flags)."""

    n_factors: int = 100
    ratios: tuple[float, ...] = (0.05, 0.2, 0.8)
    sizes: tuple[int, ...] = (25, 50, 75, 100, 125, 150)
    n_test: int = 2000
    seeds: int = 10
    noise_std: float = 0.3
    mixing: str = "orthogonal"
    cv_folds: int = 5
    n_alphas: int = 20
    ridge_alphas: tuple[float, ...] = tuple(np.logspace(-3, 3, 25).tolist())

    def __post_init__(self) -> None:
        if self.n_factors < 2:
            raise ValueError(f"n_factors must be >= 2, got {self.n_factors}")
        if not self.ratios or any(not 0.0 < r <= 1.0 for r in self.ratios):
            raise ValueError(f"ratios (ℓ/m) must be in (0, 1], got {self.ratios}")
        if not self.sizes or min(self.sizes) < self.cv_folds:
            raise ValueError(
                f"every training size must be >= cv_folds ({self.cv_folds}), got {self.sizes}"
            )
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")
        if self.seeds < 1 or self.n_test < 10:
            raise ValueError("need seeds >= 1 and n_test >= 10")
        if self.mixing not in ("orthogonal", "invertible"):
            raise ValueError(f"mixing must be 'orthogonal' or 'invertible', got {self.mixing!r}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """Coefficient of determination on the test set."""
    return float(1.0 - np.mean((y - pred) ** 2) / np.var(y))


def _fit_predict(name: str, cfg: GeneralizationConfig, X: np.ndarray, y: np.ndarray, seed: int):
    """Fit one estimator on the training set (CV inside) and return it."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LassoCV, LinearRegression, RidgeCV
    from sklearn.model_selection import KFold

    folds = KFold(cfg.cv_folds, shuffle=True, random_state=seed)
    if name == "lasso":
        model = LassoCV(alphas=cfg.n_alphas, cv=folds, n_jobs=1, max_iter=5000, tol=1e-4)
    elif name == "ridge":
        model = RidgeCV(alphas=cfg.ridge_alphas)  # efficient leave-one-out CV
    else:
        model = LinearRegression()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return model.fit(X, y)


def run_generalization(
    cfg: GeneralizationConfig, progress: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the study; return (aggregated rows with :data:`CSV_COLUMNS`, per-seed rows)."""
    m = cfg.n_factors
    per_seed: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in range(cfg.seeds):
        rng = np.random.default_rng([seed, 17])
        L = random_orthogonal(rng, m) if cfg.mixing == "orthogonal" else random_invertible(rng, m)
        for ratio in cfg.ratios:
            ell = max(1, round(ratio * m))
            w = np.zeros(m)
            support = rng.choice(m, size=ell, replace=False)
            w[support] = rng.standard_normal(ell)
            w /= np.linalg.norm(w)
            n_max = max(cfg.sizes)
            z = rng.standard_normal((n_max + cfg.n_test, m))
            y = z @ w + cfg.noise_std * rng.standard_normal(len(z))
            reps = {"disentangled": z, "entangled": z @ L.T}
            for n in cfg.sizes:  # nested training sets: the first n samples
                for rep, feats in reps.items():
                    X_tr, y_tr = feats[:n], y[:n]
                    X_te, y_te = feats[n_max:], y[n_max:]
                    for est in ESTIMATORS:
                        model = _fit_predict(est, cfg, X_tr, y_tr, seed)
                        per_seed.append(
                            {
                                "l_over_m": ratio,
                                "n_samples": n,
                                "representation": rep,
                                "estimator": est,
                                "seed": seed,
                                "r2": _r2(y_te, model.predict(X_te)),
                            }
                        )
        if progress:
            print(
                f"  seed {seed + 1}/{cfg.seeds} done ({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
    rows = []
    keys = sorted(
        {(r["l_over_m"], r["n_samples"], r["representation"], r["estimator"]) for r in per_seed}
    )
    for key in keys:
        vals = np.array(
            [
                r["r2"]
                for r in per_seed
                if (r["l_over_m"], r["n_samples"], r["representation"], r["estimator"]) == key
            ]
        )
        se = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
        rows.append(dict(zip(CSV_COLUMNS, (*key, float(vals.mean()), se), strict=True)))
    return rows, per_seed


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Write rows as CSV atomically."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row[c] for c in columns})
    atomic_write_bytes(path, buf.getvalue().encode())


_STYLE = {
    ("lasso", "disentangled"): ("tab:blue", "-", "Lasso, disentangled"),
    ("lasso", "entangled"): ("tab:blue", "--", "Lasso, entangled"),
    ("ridge", "disentangled"): ("tab:orange", "-", "Ridge, disentangled"),
    ("ridge", "entangled"): ("tab:orange", "--", "Ridge, entangled"),
    ("least_squares", "disentangled"): ("tab:gray", ":", "Least squares (either)"),
}
_FLOOR = -0.1  # R² below this (least squares near n = m) is drawn as off the scale


def plot_generalization(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """One panel per ℓ/m: test R² vs training size, mean ± standard error over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({r["l_over_m"] for r in rows})
    fig, axes = plt.subplots(1, len(ratios), figsize=(4.6 * len(ratios), 4.0), squeeze=False)
    for ax, ratio in zip(axes[0], ratios, strict=True):
        for (est, rep), (color, ls, label) in _STYLE.items():
            sel = sorted(
                (
                    r
                    for r in rows
                    if r["l_over_m"] == ratio
                    and r["estimator"] == est
                    and r["representation"] == rep
                ),
                key=lambda r: r["n_samples"],
            )
            if not sel:
                continue
            mean = [r["r2_mean"] if r["r2_mean"] >= _FLOOR else np.nan for r in sel]
            ax.errorbar(
                [r["n_samples"] for r in sel],
                mean,
                yerr=[r["r2_se"] for r in sel],
                color=color,
                linestyle=ls,
                marker="o" if ls != "--" else "s",
                markersize=3 if ls != "--" else 5,
                markerfacecolor="none" if ls == "--" else color,
                capsize=2,
                label=label,
            )
        ax.set_title(f"ℓ/m = {ratio:g}")
        ax.set_xlabel("training samples n")
        ax.set_ylim(-0.1, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test R² (mean ± s.e.; gaps: below −0.1)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize_generalization(rows: Sequence[dict[str, Any]]) -> str:
    """A printed table: R² per (ℓ/m, n) for Lasso/Ridge on both representations."""
    lines = ["l/m    n    lasso-dis  lasso-ent  ridge-dis  ridge-ent  lstsq-dis"]
    idx = {(r["l_over_m"], r["n_samples"], r["representation"], r["estimator"]): r for r in rows}
    for ratio in sorted({r["l_over_m"] for r in rows}):
        for n in sorted({r["n_samples"] for r in rows}):
            vals = [
                idx.get((ratio, n, rep, est))
                for est, rep in (
                    ("lasso", "disentangled"),
                    ("lasso", "entangled"),
                    ("ridge", "disentangled"),
                    ("ridge", "entangled"),
                    ("least_squares", "disentangled"),
                )
            ]
            cells = "  ".join(f"{v['r2_mean']:9.3f}" if v else "        -" for v in vals)
            lines.append(f"{ratio:<5g} {n:4d}  {cells}")
    return "\n".join(lines)


def run_and_save(cfg: GeneralizationConfig, output: Path) -> list[dict[str, Any]]:
    """Run, then write ``results.csv``, ``per_seed.csv``, ``config.json`` and ``r2_vs_n.png``."""
    start = time.perf_counter()
    rows, per_seed = run_generalization(cfg)
    write_csv(output / "results.csv", rows, CSV_COLUMNS)
    write_csv(
        output / "per_seed.csv",
        per_seed,
        ("l_over_m", "n_samples", "representation", "estimator", "seed", "r2"),
    )
    meta = asdict(cfg) | {"seconds": time.perf_counter() - start}
    atomic_write_json(output / "config.json", meta)
    plot_generalization(
        rows,
        output / "r2_vs_n.png",
        f"m = {cfg.n_factors}, noise σ = {cfg.noise_std}, {cfg.seeds} seeds, "
        f"entangled = {cfg.mixing} mixing",
    )
    return rows
