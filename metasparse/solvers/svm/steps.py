"""The pieces of one FISTA step of :class:`.fista.GroupSparseSVMSolver`: momentum and its
restart, the fused pass over ``X`` (:func:`step_pass`), the adaptive metric scale
(:func:`adapt_scale`), and the ridge warm start of dense solutions (:func:`ridge_warm_start`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metasparse.solvers import tuning
from metasparse.solvers.rows import Rows
from metasparse.solvers.svm.metric import Metric
from metasparse.solvers.svm.problem import (
    column_norms,
    dual_objective,
    gradient_from_scores,
    shrunk,
)


def ridge_warm_start(
    rows: Rows,
    Y: Tensor,
    lam1: Tensor,
    alpha: Tensor,
    Mt: Tensor,
    metric: Metric,
    lam2: float,
    tau: float,
    steps: int,
) -> tuple[Tensor, Tensor]:
    """A better start for dense solutions: the best point of the dual ``D`` on the segment
    from ``alpha`` (the solution at ``λ1 = λ_max``, ``Mt`` its M) to an approximate solution
    at ``λ1 = 0``. Returns the point and its M.

    At ``λ1 = 0`` the dual is the quadratic ``½ tr((Y − α)ᵀ G (Y − α))/λ2 + …`` in the Gram
    matrix ``G``: ``steps`` FISTA steps in the metric (which ``G``'s spectrum defines, so they
    converge fast) cost no pass over ``X``. M at their point costs one, and M is linear along
    the segment, so ``D`` is searched on a grid of the segment without more (``D`` is convex:
    the grid's best is never worse than the start). 5-way, 8 episodes, p = 16000, iterations
    at λ1/λ_max = 0.01 and 0.1: 15-shot 7 → 4.1 and 10.5 → 8.4, 5-shot 6 → 4 and 10.9 → 8;
    fwd+bwd 0.87 and 0.94 (15-shot), 0.92 at 5-shot 0.1. Sparse solutions (the working set's)
    gain nothing: their best point is the start.
    """
    G = metric.gram
    a, prev = alpha, alpha
    t = alpha.new_ones(alpha.shape[0], 1, 1)
    Z = alpha.new_zeros(alpha.shape[0], metric.V.shape[-1], Y.shape[2])
    for _ in range(steps):
        t_next, mom = momentum(t, False)
        y = a + mom * (a - prev)
        grad = gradient_from_scores(G @ (Y - y) / lam2, y, Y, tau)
        new, Z = metric.prox(y, grad, Z)
        prev, a, t = a, new, restart(t_next, metric.apply(new - y), a, new)
    Mr = rows.left((Y - a).to(Mt.dtype).transpose(1, 2))
    dM = Mr - Mt
    # along the segment ‖M_j(s)‖² = A + 2Bs + Cs², and the rest of D (dual_objective) is a
    # quadratic in s: a grid point costs a few (T, p) ops
    A, B2, C = ((u * v).sum(1) for u, v in ((Mt, Mt), (Mt, 2.0 * dM), (dM, dM)))
    d, dev = a - alpha, alpha - Y
    quad = torch.stack(
        [
            0.5 * tau * (dev * dev).sum((1, 2)) - (alpha * (1.0 - Y)).sum((1, 2)),
            tau * (dev * d).sum((1, 2)) - (d * (1.0 - Y)).sum((1, 2)),
            0.5 * tau * (d * d).sum((1, 2)),
        ]
    )  # (3, T)
    grid = torch.linspace(0.0, 1.0, tuning.RIDGE_GRID, dtype=torch.float64, device=alpha.device)
    lam = lam1.to(A.dtype).unsqueeze(-1)
    D = []
    for s in grid.tolist():  # in X's dtype: only the grid's argmin is used
        ex = torch.add(A, torch.add(B2, C, alpha=s), alpha=s).clamp_min_(0.0).sqrt_()
        ex = ex.sub_(lam).clamp_min_(0.0)
        D.append((ex * ex).sum(-1, dtype=torch.float64) / (2.0 * lam2))
    powers = torch.stack([torch.ones_like(grid), grid, grid * grid], -1)  # (G, 3)
    s = grid[(torch.stack(D) + powers @ quad).argmin(0)].reshape(-1, 1, 1)
    return alpha + s * d, torch.lerp(Mt, Mr, s.to(Mt.dtype))


def restart(
    t_next: Tensor, Qd: Tensor, a: Tensor, new: Tensor, also: Tensor | None = None
) -> Tensor:
    """FISTA's next ``t`` after the gradient restart (O'Donoghue & Candès, in the metric): 1
    for the tasks whose step ``y → new`` from ``a`` points uphill, ``⟨Q(new − y), a − new⟩ > 0``
    (``Qd = Q(new − y)``), and for those in ``also``."""
    up = (Qd * (a - new)).sum((1, 2)) > 0
    if also is not None:
        up = up | also
    return torch.where(up.reshape(-1, 1, 1), torch.ones_like(t_next), t_next)


def momentum(t: Tensor, pgd: bool) -> tuple[Tensor, Tensor]:
    """FISTA's next ``t`` and the extrapolation weight ``(t − 1)/t_next`` (none for PGD)."""
    if pgd:
        return t, torch.zeros_like(t)
    t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
    return t_next, (t - 1.0) / t_next


def step_pass(
    rows: Rows, Yn: Tensor, Mt: Tensor, w: Tensor, lam1: Tensor, lam2: float, at_new: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """One fused pass over ``X`` (:meth:`.Rows.left_then_right`): ``M`` at the new point,
    ``Mt_new = Yn X`` with ``Yn = (Y − α_new)ᵀ``, then the next extrapolated point's
    ``My = lerp(Mt, Mt_new, w)`` with its feature norms and scores (as :func:`.problem.scores`);
    with ``at_new``, the scores at the new point too (its certificate). Returns
    ``(Mt_new, My, nrm, S, (nrm_new, S_new) or None)``.
    """
    B, K, _ = Yn.shape
    p = rows.X.shape[2]
    Mt_new = Mt.new_empty(B, K, p)
    My = torch.empty_like(Mt_new)
    nrm = Mt.new_empty(2 if at_new else 1, B, p)
    lam = lam1.to(Mt.dtype).unsqueeze(-1)

    def weights(Mc: Tensor, c: slice) -> Tensor:  # per chunk (32 at 15-shot, p = 16000)
        W = shrunk(torch.lerp(Mt[:, :, c], Mc, w, out=My[:, :, c]), lam, nrm[0, :, c])
        return torch.cat([W, shrunk(Mc, lam, nrm[1, :, c])], 1) if at_new else W

    S = rows.left_then_right(Yn, weights, left=Mt_new).double() / lam2
    nrm = nrm.double()
    return Mt_new, My, nrm[0], S[..., :K], (nrm[1], S[..., K:]) if at_new else None


def adapt_scale(
    state: Tensor,
    d: Tensor,
    Qd: Tensor,
    new: Tensor,
    Mt_new: Tensor,
    a: Tensor,
    Mt: Tensor,
    grad: Tensor,
    nrm_y: Tensor,
    D_y: Tensor | None,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Check the step ``y → new`` taken in the metric ``s·Q`` and set the next ``s`` per task.

    ``ρ = (D(new) − D(y) − ⟨∇D(y), d⟩)/(½‖d‖²_Q)`` is the curvature the step met, as a fraction
    of ``Q``'s (``≤ 1``: ``Q`` majorises). A step with ``ρ > s`` broke the majorisation: it is
    rejected (the task stays at ``a`` and its momentum restarts) and ``1.25ρ`` becomes the
    task's floor for ``s``, so that rejections stop once the floor covers the largest
    curvature met (steps from rest meet less than momentum steps: without the floor ``s``
    oscillates, one step in two rejected). The next scale is ``clip(max(2ρ, floor), S_MIN, 1)``.
    Sparse solutions meet 5-30% of ``Q``'s curvature (features near the threshold barely bend
    the group norm). Steps too small for ``ρ`` to rise above the round-off of ``D`` leave ``s``
    as it is. ``state`` is (T, 2): ``s`` and its floor. Returns
    ``(new, Mt_new, state, rejected)``.
    """
    q = 0.5 * (Qd * d).sum((1, 2))
    nrm_new = column_norms(Mt_new).double()
    D_new = dual_objective(nrm_new, new, Y, lam1, lam2, tau)
    if D_y is None:
        D_y = dual_objective(nrm_y, new - d, Y, lam1, lam2, tau)
    excess = D_new - D_y - (grad * d).sum((1, 2))
    # round-off of D: ‖M_j‖ carries a relative error ~√n·eps of X's dtype, and enters D
    # through (‖M_j‖ − λ1)₊²/(2λ2)
    lam = lam1.unsqueeze(-1)
    mass = (nrm_y * (nrm_y - lam).clamp_min(0.0)).sum(-1)
    mass = mass + (nrm_new * (nrm_new - lam).clamp_min(0.0)).sum(-1)
    eps = torch.finfo(Mt_new.dtype).eps * Y.shape[1] ** 0.5
    reliable = q > 100.0 * eps * mass / lam2
    rho = excess / q.clamp_min(torch.finfo(torch.float64).tiny)
    s, floor = state[:, 0], state[:, 1]
    rejected = reliable & (rho > s * (1.0 + 1e-3)) & (s < 1.0)
    floor = torch.where(rejected, torch.maximum(floor, 1.25 * rho), floor)
    s_next = torch.where(reliable, torch.maximum(2.0 * rho, floor).clamp(tuning.SCALE_MIN, 1.0), s)
    if bool(rejected.any()):
        m3 = rejected.reshape(-1, 1, 1)
        new, Mt_new = torch.where(m3, a, new), torch.where(m3, Mt, Mt_new)
    return new, Mt_new, torch.stack([s_next, floor.clamp_max(1.0)], -1), rejected
