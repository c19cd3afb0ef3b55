"""Batched (group-)Lasso regression, the inner problem of the synthetic bi-level study.

For each task ``t`` (features ``X_t ∈ R^{n×p}``, targets ``Y_t ∈ R^{n×K}``)::

    W_t = argmin_W  (1/(2n)) ‖Y_t − X_t W‖_F² + λ_t Σ_j ‖W_{j,:}‖₂,     λ_t = ratio · λ_max(t)
    λ_max(t) = max_j ‖(X_tᵀ Y_t)_{j,:}‖₂ / n      (the smallest λ with W_t = 0)

(``K = 1`` is the Lasso; the scaling is scikit-learn's ``Lasso``/``MultiTaskLasso``.) The solver
is accelerated proximal gradient (FISTA with adaptive restart) in float64 on detached tensors,
stopped on the relative duality gap. The solution is attached to autograd by
:func:`metasparse.solvers.root.implicit_root` on the proximal-gradient fixed point, restricted
to the nonzero groups, so gradients w.r.t. ``X`` and ``Y`` (including through ``λ_max``) are
exact implicit ones; the iterations are never unrolled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from metasparse.solvers.root import implicit_root

__all__ = [
    "GroupLassoResult",
    "GroupLassoSolver",
    "fista_group_lasso",
    "group_lasso_lambda_max",
    "group_lasso_objective",
    "solve_group_lasso",
]

_TINY = 1e-300


def _as_batch(X: Tensor, Y: Tensor) -> tuple[Tensor, Tensor, bool]:
    """Check shapes ``X (T, n, p)`` and ``Y (T, n)`` or ``(T, n, K)``; return ``Y`` as 3-D."""
    if X.dim() != 3:
        raise ValueError(f"X must be (tasks, samples, features), got shape {tuple(X.shape)}")
    squeeze = Y.dim() == 2
    Y3 = Y.unsqueeze(-1) if squeeze else Y
    if Y3.dim() != 3 or Y3.shape[:2] != X.shape[:2]:
        raise ValueError(
            f"Y must be (tasks, samples) or (tasks, samples, outputs) matching X {tuple(X.shape)}, "
            f"got {tuple(Y.shape)}"
        )
    if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
        raise ValueError("X and Y must be finite (found NaN or Inf)")
    return X, Y3, squeeze


def group_lasso_lambda_max(X: Tensor, Y: Tensor) -> Tensor:
    """``λ_max`` per task: ``max_j ‖(XᵀY)_j‖₂ / n`` (differentiable almost everywhere)."""
    X, Y3, _ = _as_batch(X, Y)
    corr = X.transpose(1, 2) @ Y3 / X.shape[1]
    return corr.norm(dim=2).amax(dim=1)


def group_lasso_objective(W: Tensor, X: Tensor, Y: Tensor, lam: Tensor) -> Tensor:
    """Primal objective per task for ``W (T, p, K)`` (or ``(T, p)`` with 2-D ``Y``)."""
    X, Y3, _ = _as_batch(X, Y)
    W3 = W.unsqueeze(-1) if W.dim() == 2 else W
    resid = Y3 - X @ W3
    return (resid**2).sum((1, 2)) / (2 * X.shape[1]) + lam * W3.norm(dim=2).sum(1)


def _bst(V: Tensor, thresh: Tensor) -> Tensor:
    """Row-wise block soft-thresholding ``max(0, 1 − t/‖v‖) v`` with per-task ``t`` (T,)."""
    norms = V.norm(dim=2, keepdim=True)
    scale = torch.clamp(1.0 - thresh[:, None, None] / norms.clamp_min(_TINY), min=0.0)
    return scale * V


def _bst_np(V: np.ndarray, thresh: np.ndarray) -> np.ndarray:
    """NumPy twin of :func:`_bst` for the forward iterations (far less per-call overhead)."""
    norms = np.sqrt(np.einsum("tpk,tpk->tp", V, V))[:, :, None]
    return np.maximum(1.0 - thresh[:, None, None] / np.maximum(norms, _TINY), 0.0) * V


def _duality_gap(
    G: np.ndarray, b: np.ndarray, yy: np.ndarray, W: np.ndarray, lam: np.ndarray
) -> np.ndarray:
    """Relative duality gap from the rescaled residual; ``G = XᵀX/n``, ``b = XᵀY/n``, ``yy=‖Y‖²/n``.

    With ``θ = s (Y − XW)/n``, ``s = min(1, λ / max_j ‖X_jᵀ(Y − XW)/n‖)``, the dual value is
    ``yy/2 − (n/2)‖θ − Y/n‖²`` which expands in ``G``, ``b``, ``yy`` without touching ``X``.
    """
    GW = G @ W
    corr = b - GW  # Xᵀ(Y − XW)/n
    wb = (W * b).sum((1, 2))
    rr = yy - 2 * wb + (W * GW).sum((1, 2))  # ‖Y − XW‖²/n
    primal = 0.5 * rr + lam * np.sqrt((W * W).sum(2)).sum(1)
    s = np.minimum(lam / np.maximum(np.sqrt((corr * corr).sum(2)).max(1), _TINY), 1.0)
    # n‖θ − Y/n‖² = ‖s·R − Y‖²/n = s² rr − 2 s ⟨R, Y⟩/n + yy, with ⟨R, Y⟩/n = yy − ⟨W, b⟩
    ry = yy - wb
    dual = 0.5 * yy - 0.5 * (s**2 * rr - 2 * s * ry + yy)
    return (primal - dual) / np.maximum(np.abs(primal), 1e-12)


def fista_group_lasso(
    X: np.ndarray, Y: np.ndarray, lam: np.ndarray, max_iter: int, tol: float, check_every: int
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """FISTA with gradient restart on the Gram form, float64 NumPy, batched over tasks.

    Returns ``W (T, p, K)``, the relative duality gaps, the iterations run and the step ``1/L``.
    """
    n = X.shape[1]
    Xt = X.transpose(0, 2, 1)
    G = Xt @ X / n
    b = Xt @ Y / n
    yy = (Y**2).sum((1, 2)) / n
    L = np.maximum(np.linalg.eigvalsh(G)[:, -1], 1e-12)
    step = 1.0 / L
    W = np.zeros_like(b)
    V = W
    t = np.ones_like(L)
    gap = np.full_like(L, np.inf)
    it = 0
    for it in range(1, max_iter + 1):
        W_new = _bst_np(V - step[:, None, None] * (G @ V - b), step * lam)
        # restart momentum where the step goes against the last move (O'Donoghue–Candès)
        restart = ((V - W_new) * (W_new - W)).sum((1, 2)) > 0
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t**2))
        beta = np.where(restart, 0.0, (t - 1) / t_new)
        V = W_new + beta[:, None, None] * (W_new - W)
        t = np.where(restart, 1.0, t_new)
        W = W_new
        if it % check_every == 0 or it == max_iter:
            gap = _duality_gap(G, b, yy, W, lam)
            if bool((gap <= tol).all()):
                break
    return W, gap, it, step


@dataclass(frozen=True)
class GroupLassoResult:
    """Solution (attached to autograd when the inputs were), ``λ``, ``λ_max`` and diagnostics."""

    W: Tensor
    lam: Tensor
    lam_max: Tensor
    gap: Tensor
    n_iter: int
    converged: bool

    @property
    def active(self) -> Tensor:
        """Bool (T, p): which features each task uses."""
        W3 = self.W.unsqueeze(-1) if self.W.dim() == 2 else self.W
        return W3.detach().norm(dim=2) > 0


@dataclass(frozen=True)
class GroupLassoSolver:
    """Batched group-Lasso with ``λ`` given as a ratio of each task's ``λ_max``.

    Attributes:
        lam_ratio: ``λ/λ_max`` in ``(0, 1]``; 1 gives ``W = 0``.
        max_iter: FISTA iterations at most.
        tol: stop when every task's relative duality gap is below this.
        check_every: iterations between duality-gap checks.
        implicit_diff: attach the solution to autograd by implicit differentiation.
    """

    lam_ratio: float = 0.1
    max_iter: int = 2000
    tol: float = 1e-9
    check_every: int = 10
    implicit_diff: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.lam_ratio <= 1.0:
            raise ValueError(f"lam_ratio must be in (0, 1] (λ/λ_max), got {self.lam_ratio}")
        if self.max_iter < 1 or self.check_every < 1:
            raise ValueError("max_iter and check_every must be >= 1")

    def run(self, X: Tensor, Y: Tensor) -> GroupLassoResult:
        """Solve every task; ``W`` is ``(T, p)`` for 2-D ``Y``, else ``(T, p, K)``."""
        X, Y3, squeeze = _as_batch(X, Y)
        dtype = X.dtype
        with torch.no_grad():
            X64 = X.detach().cpu().double().numpy()
            Y64 = Y3.detach().cpu().double().numpy()
        lam_max_np = np.sqrt(((X64.transpose(0, 2, 1) @ Y64) ** 2).sum(2)).max(1) / X.shape[1]
        lam_np = self.lam_ratio * lam_max_np
        W_np, gap_np, it, step_np = fista_group_lasso(
            X64, Y64, lam_np, self.max_iter, self.tol, self.check_every
        )
        converged = bool((gap_np <= self.tol).all())
        W = torch.as_tensor(W_np, device=X.device)
        step = torch.as_tensor(step_np, device=X.device)
        lam = torch.as_tensor(lam_np, device=X.device)
        lam_max = torch.as_tensor(lam_max_np, device=X.device)
        gap = torch.as_tensor(gap_np)
        needs_grad = X.requires_grad or Y.requires_grad
        if self.implicit_diff and needs_grad and torch.is_grad_enabled():
            ratio = self.lam_ratio
            step_c = step.to(dtype)

            def fixed_point(Wz: Tensor, Xp: Tensor, Yp: Tensor) -> Tensor:
                """``W − prox(W − η∇f(W))``: zero exactly at the group-Lasso solution."""
                lam_p = ratio * group_lasso_lambda_max(Xp, Yp)
                grad = Xp.transpose(1, 2) @ (Xp @ Wz - Yp) / Xp.shape[1]
                return Wz - _bst(Wz - step_c[:, None, None] * grad, step_c * lam_p)

            active = (W.norm(dim=2, keepdim=True) > 0).expand_as(W)
            W_out = implicit_root(fixed_point, W.to(dtype), (X, Y3), active=active)
        else:
            W_out = W.to(dtype)
        if squeeze:
            W_out = W_out.squeeze(-1)
        return GroupLassoResult(W_out, lam.to(dtype), lam_max.to(dtype), gap, it, converged)


def solve_group_lasso(X: Tensor, Y: Tensor, lam_ratio: float = 0.1, **options: object) -> Tensor:
    """The group-Lasso solution ``W`` per task (differentiable implicitly in ``X`` and ``Y``)."""
    return GroupLassoSolver(lam_ratio=lam_ratio, **options).run(X, Y).W  # type: ignore[arg-type]
