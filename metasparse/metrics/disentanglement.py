"""Disentanglement metrics: MCC (matched correlations) and DCI (Eastwood & Williams, ICLR 2018).

Both compare learned codes ``z_hat`` (``n × k``) with true factors ``z`` (``n × m``); rows are
samples. A representation equal to the factors up to permutation and scaling scores 1 on MCC and
on DCI disentanglement/completeness; any mixing lowers both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

__all__ = ["DCIScores", "MCCResult", "correlation_matrix", "dci", "mcc", "mcc_matching"]

_EPS = 1e-12


@dataclass(frozen=True)
class MCCResult:
    """An MCC with its matching: ``pairs`` maps true factor ``rows[i]`` to code ``cols[i]``."""

    value: float
    rows: np.ndarray
    cols: np.ndarray
    matched: np.ndarray  # the matched absolute correlations, in the order of ``rows``
    corr: np.ndarray  # the full |correlation| matrix, true factors × codes


@dataclass(frozen=True)
class DCIScores:
    """DCI disentanglement, completeness, informativeness (R² on held-out samples)."""

    disentanglement: float
    completeness: float
    informativeness: float
    importance: np.ndarray  # codes × factors, non-negative

    def as_dict(self) -> dict[str, float]:
        """The three scalar scores, for CSV/JSON output."""
        return {
            "dci_disentanglement": self.disentanglement,
            "dci_completeness": self.completeness,
            "dci_informativeness": self.informativeness,
        }


def _check_pair(z: np.ndarray, z_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two sample matrices with the same number of rows; return them as float64."""
    z = np.asarray(z, dtype=np.float64)
    z_hat = np.asarray(z_hat, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z_hat.ndim == 1:
        z_hat = z_hat[:, None]
    if z.ndim != 2 or z_hat.ndim != 2:
        raise ValueError(
            f"factors and codes must be 2-D (samples × dims), got shapes {z.shape} and "
            f"{z_hat.shape}"
        )
    if z.shape[0] != z_hat.shape[0]:
        raise ValueError(
            f"factors and codes must have the same number of samples (rows), got {z.shape[0]} "
            f"and {z_hat.shape[0]}; pass the codes of the same samples as the factors"
        )
    if z.shape[0] < 3:
        raise ValueError(f"need at least 3 samples to compute correlations, got {z.shape[0]}")
    if not (np.isfinite(z).all() and np.isfinite(z_hat).all()):
        raise ValueError("factors and codes must be finite (found NaN or Inf)")
    return z, z_hat


def correlation_matrix(z: np.ndarray, z_hat: np.ndarray, method: str = "pearson") -> np.ndarray:
    """Absolute correlations between every true factor (rows) and every code (columns).

    Constant columns get correlation 0 (they carry no information about any factor).
    """
    z, z_hat = _check_pair(z, z_hat)
    if method == "spearman":
        z = np.apply_along_axis(rankdata, 0, z)
        z_hat = np.apply_along_axis(rankdata, 0, z_hat)
    elif method != "pearson":
        raise ValueError(f"unknown correlation method {method!r}; use 'pearson' or 'spearman'")
    a = z - z.mean(axis=0)
    b = z_hat - z_hat.mean(axis=0)
    na = np.linalg.norm(a, axis=0)
    nb = np.linalg.norm(b, axis=0)
    denom = np.outer(na, nb)
    corr = np.divide(a.T @ b, denom, out=np.zeros((a.shape[1], b.shape[1])), where=denom > _EPS)
    return np.clip(np.abs(corr), 0.0, 1.0)


def mcc_matching(z: np.ndarray, z_hat: np.ndarray, method: str = "pearson") -> MCCResult:
    """MCC with the optimal one-to-one matching of factors to codes (``linear_sum_assignment``).

    With ``m`` factors and ``k`` codes, ``min(m, k)`` pairs are matched; the MCC is their mean.
    """
    corr = correlation_matrix(z, z_hat, method)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    matched = corr[rows, cols]
    return MCCResult(float(matched.mean()), rows, cols, matched, corr)


def mcc(z: np.ndarray, z_hat: np.ndarray, method: str = "pearson") -> float:
    """Mean correlation coefficient: mean |corr| of the best one-to-one factor/code matching."""
    return mcc_matching(z, z_hat, method).value


def _entropy_score(p: np.ndarray, axis: int, base: int) -> np.ndarray:
    """``1 − H_base(p)`` along ``axis`` for rows/columns of probabilities (0 log 0 = 0)."""
    if base <= 1:
        return np.ones(p.shape[1 - axis])
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(p > 0, np.log(p), 0.0)
    h = -(p * logs).sum(axis=axis) / np.log(base)
    return 1.0 - h


def _importance_lasso(
    codes_tr: np.ndarray, z_tr: np.ndarray, alpha: float
) -> tuple[np.ndarray, list]:
    """|coefficients| of a Lasso per factor on standardized codes: codes × factors."""
    from sklearn.linear_model import Lasso

    models = []
    imp = np.zeros((codes_tr.shape[1], z_tr.shape[1]))
    for j in range(z_tr.shape[1]):
        model = Lasso(alpha=alpha, max_iter=10000).fit(codes_tr, z_tr[:, j])
        imp[:, j] = np.abs(model.coef_)
        models.append(model)
    return imp, models


def _importance_trees(codes_tr: np.ndarray, z_tr: np.ndarray, seed: int) -> tuple[np.ndarray, list]:
    """Impurity importances of a gradient-boosted regressor per factor (disentanglement_lib)."""
    from sklearn.ensemble import GradientBoostingRegressor

    models = []
    imp = np.zeros((codes_tr.shape[1], z_tr.shape[1]))
    for j in range(z_tr.shape[1]):
        model = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=seed)
        model.fit(codes_tr, z_tr[:, j])
        imp[:, j] = model.feature_importances_
        models.append(model)
    return imp, models


def dci(
    z: np.ndarray,
    z_hat: np.ndarray,
    regressor: str = "lasso",
    test_fraction: float = 0.3,
    alpha: float = 0.01,
    seed: int = 0,
) -> DCIScores:
    """DCI scores from a feature-importance matrix ``R`` (codes × factors).

    For each factor a regressor predicts it from the standardized codes on a training split;
    ``R[i, j]`` is code ``i``'s importance for factor ``j`` (|Lasso coefficient| with
    ``regressor='lasso'``, impurity importance with ``'gbt'``). Disentanglement is
    ``1 − H_m(R[i, :]/ΣR[i, :])`` averaged over codes weighted by their total importance,
    completeness ``1 − H_k(R[:, j]/ΣR[:, j])`` averaged over factors weighted likewise, and
    informativeness the mean held-out R² of the regressors (higher is better; 1 is perfect).
    """
    z, z_hat = _check_pair(z, z_hat)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = z.shape[0]
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 3:
        raise ValueError(f"too few samples ({n}) for a train/test split; pass at least 10")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    mu, sd = z_hat[train].mean(axis=0), z_hat[train].std(axis=0)
    codes = (z_hat - mu) / np.where(sd > _EPS, sd, 1.0)
    zmu, zsd = z[train].mean(axis=0), z[train].std(axis=0)
    factors = (z - zmu) / np.where(zsd > _EPS, zsd, 1.0)
    if regressor == "lasso":
        imp, models = _importance_lasso(codes[train], factors[train], alpha)
    elif regressor == "gbt":
        imp, models = _importance_trees(codes[train], factors[train], seed)
    else:
        raise ValueError(f"unknown DCI regressor {regressor!r}; use 'lasso' or 'gbt'")
    r2 = []
    for j, model in enumerate(models):
        resid = factors[test, j] - model.predict(codes[test])
        var = np.var(factors[test, j])
        r2.append(1.0 - np.mean(resid**2) / var if var > _EPS else 0.0)
    k, m = imp.shape
    total = imp.sum()
    if total <= _EPS:
        return DCIScores(0.0, 0.0, float(np.mean(r2)), imp)
    row_sum = imp.sum(axis=1)
    col_sum = imp.sum(axis=0)
    p_rows = imp / np.where(row_sum > _EPS, row_sum, 1.0)[:, None]
    p_cols = imp / np.where(col_sum > _EPS, col_sum, 1.0)[None, :]
    d_per_code = _entropy_score(p_rows, axis=1, base=m)
    c_per_factor = _entropy_score(p_cols, axis=0, base=k)
    disent = float(np.sum(d_per_code * row_sum / total))
    compl = float(np.sum(c_per_factor * col_sum / total))
    return DCIScores(disent, compl, float(np.mean(r2)), imp)
