"""Active-set Newton polish, with continuation in ``λ2``, for episodes FISTA does not certify.

FISTA's rate depends on the conditioning ``‖X‖²/(λ2 τ)``; Newton's does not. The solver calls
:func:`continuation_polish` on the episodes still uncertified after ``polish_after``
iterations and hands itself over (its settings and its ``_run``, for the first stage): this
module does not import :mod:`.fista`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from metasparse.solvers import tuning
from metasparse.solvers.linalg import spd_solve
from metasparse.solvers.rows import Rows
from metasparse.solvers.svm.problem import (
    certificate,
    column_norms,
    dual_hessian,
    dual_objective,
    gradient_from_scores,
    project_simplex,
    scores,
)


def _newton_direction(alpha: Tensor, g: Tensor, H: Tensor) -> Tensor:
    """Newton direction ``δ`` (T, n, K) for ``D`` on the simplices, from the gradient ``g`` and
    Hessian ``H`` at ``α``.

    Face: the coordinates above round-off (1e-12; the simplex projection leaves ~1e-17 where
    it means 0, and those would stop every step), plus those whose gradient is below every
    positive one of their row (moving mass there is downhill). Off the face ``α`` goes to 0 and
    its mass is spread over the row's face; on it ``δ`` minimises the quadratic model in the
    face's tangent space, ``(P H P + I − P) u = −P(g + H δ₀)``. Entering coordinates the step
    would push below 0 leave the face and the system is solved again.
    """
    T, n, K = alpha.shape
    nK = n * K
    same = torch.block_diag(*[torch.ones(K, K, dtype=H.dtype)] * n).to(H.device)
    eye = torch.eye(nK, dtype=H.dtype, device=H.device)
    pos = alpha > 1e-12  # below: round-off of the simplex projection
    lo_g = torch.where(pos, g, torch.full_like(g, float("inf"))).amin(-1, keepdim=True)
    face = pos | (g < lo_g)
    face |= alpha == alpha.amax(-1, keepdim=True)  # never empty
    while True:  # each round removes at least one coordinate: ends
        f = face.reshape(T, nK).to(H.dtype)
        cnt = face.sum(-1, keepdim=True).to(H.dtype)
        inv = (1.0 / cnt).expand(T, n, K).reshape(T, nK)
        Pm = torch.diag_embed(f) - f.unsqueeze(2) * f.unsqueeze(1) * same * inv.unsqueeze(2)
        off = torch.where(face, torch.zeros_like(alpha), alpha)
        d0 = torch.where(face, off.sum(-1, keepdim=True) / cnt, -alpha).reshape(T, nK, 1)
        rhs = -(Pm @ (g.reshape(T, nK, 1) + H @ d0))
        u = spd_solve(Pm @ H @ Pm + (eye - Pm), rhs.squeeze(-1))
        delta = (d0.squeeze(-1) + u).reshape(T, n, K)
        bad = face & ~pos & (delta < 0)
        if not bool(bad.any()):
            break
        face &= ~bad
    return delta


def _ray_minimiser(
    alpha: Tensor,
    delta: Tensor,
    Y: Tensor,
    M: Tensor,
    dM: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    todo: Tensor,
) -> Tensor:
    """Step ``t`` (T,) minimising the convex ``D(α + tδ)`` on ``[0, t_max]`` (``α + tδ`` on the
    simplices), by bisection on its derivative; 0 where ``δ`` is not a descent direction.

    ``M(t) = M − t·dM`` (float64, (T, K, p)), so no pass over ``X`` is needed.
    """
    T = alpha.shape[0]
    big = torch.finfo(torch.float64).max
    # coordinates at round-off level (≤ 1e-12) do not block the step: projected to 0 after
    block = (delta < 0) & (alpha > 1e-12)
    ratio = torch.where(block, alpha / (-delta).clamp_min(1e-300), torch.full_like(alpha, big))
    t_max = ratio.amin((1, 2))
    lam = lam1.reshape(T, 1)
    lin = -(delta * (1.0 - Y)).sum((1, 2))
    dev_d, d_d = ((alpha - Y) * delta).sum((1, 2)), (delta * delta).sum((1, 2))

    def slope(t: Tensor) -> Tensor:
        Mt = M - t.reshape(T, 1, 1) * dM
        w = (1.0 - lam / column_norms(Mt)).clamp_min(0.0).unsqueeze(1)
        return -(w * Mt * dM).sum((1, 2)) / lam2 + tau * (dev_d + t * d_d) + lin

    lo = torch.zeros_like(t_max)
    descent = todo & (slope(lo) < 0)
    unbounded = t_max >= big
    hi = torch.where(unbounded, torch.ones_like(t_max), t_max)
    for _ in range(200):  # no boundary in the way: double until the slope turns
        grow = descent & unbounded & (slope(hi) < 0)
        if not bool(grow.any()):
            break
        hi = torch.where(grow, 2.0 * hi, hi)
    at_end = slope(hi) <= 0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        down = slope(mid) < 0
        lo, hi = torch.where(down, mid, lo), torch.where(down, hi, mid)
    t = torch.where(at_end, hi, lo)
    return torch.where(descent, t, torch.zeros_like(t))


def _newton_polish(
    rows: Rows,
    Y: Tensor,
    lam1: Tensor,
    alpha: Tensor,
    Mt: Tensor,
    lam2: float,
    tau: float,
    tol: float,
    steps: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Active-set Newton steps on the dual where FISTA stalls; returns ``(α, Mt, steps)``.

    FISTA's rate depends on the conditioning ``‖X‖²/(λ2 τ)`` (features scaled by 1e6: no
    progress in thousands of iterations); Newton's does not. Each step takes the Newton
    direction on the current faces and active features (:func:`_newton_direction`, a dense
    ``nK × nK`` solve), then the best of the exact minimiser along it up to the simplex
    boundary (features that activate on the way stop it there instead of wrecking it) and four
    points of the projected arc ``proj(α + sδ)``, ``s = 1 … 1/8`` (several coordinates reach 0
    at once, instead of one per step). Stops per task when certified
    at ``tol`` or when ``D`` no longer decreases.
    """
    T = Y.shape[0]
    dt = rows.X.dtype
    todo = torch.ones(T, dtype=torch.bool, device=Y.device)
    used = torch.zeros(T, dtype=torch.long, device=Y.device)
    for _ in range(steps):
        nrm, S = scores(rows, Mt, lam1, lam2)
        _, neg_D0, gap = certificate(S, nrm, alpha, Y, lam1, lam2, tau)
        todo &= gap > tol
        if not bool(todo.any()):
            break
        g = gradient_from_scores(S, alpha, Y, tau)
        delta = _newton_direction(alpha, g, dual_hessian(rows, Mt, nrm, lam1, lam2, tau))
        M64 = Mt.double()
        dM = rows.left(delta.to(dt).transpose(1, 2)).double()  # M(α + tδ) = M − t·dM
        t = _ray_minimiser(alpha, delta, Y, M64, dM, lam1, lam2, tau, todo).reshape(T, 1, 1)
        ray = project_simplex(alpha + t * delta)  # feasible up to round-off
        M_ray = (M64 - t * dM).to(dt)
        D0 = -neg_D0  # the certificate's dual value at α
        D_ray = dual_objective(column_norms(M_ray).double(), ray, Y, lam1, lam2, tau)
        # the projected arc (several coordinates reach 0 at once), at t = 1, 1/2, 1/4, 1/8
        best, M_best, D_best = ray, M_ray, D_ray
        for s_arc in (1.0, 0.5, 0.25, 0.125):
            arc = project_simplex(alpha + s_arc * delta)
            M_arc = rows.left((Y - arc).to(dt).transpose(1, 2))
            D_arc = dual_objective(column_norms(M_arc).double(), arc, Y, lam1, lam2, tau)
            better = (D_arc < torch.minimum(D_best, D0)).reshape(T, 1, 1)
            best = torch.where(better, arc, best)
            M_best = torch.where(better, M_arc, M_best)
            D_best = torch.where(better.reshape(T), D_arc, D_best)
        # a ray step cut at the boundary may leave D unchanged yet change the face: keep it
        moved = todo & ((D_best < D0) | ((t.reshape(T) > 0) & (D_ray <= D0)))
        m3 = moved.reshape(T, 1, 1)
        alpha = torch.where(m3, best, alpha)
        Mt = torch.where(m3, M_best, Mt)
        used += todo.long()
        todo &= moved
    # one pass: the ray steps update M linearly, which drifts from (Y − α)ᵀX by round-off
    return alpha, rows.left((Y - alpha).to(dt).transpose(1, 2)), used


def continuation_polish(
    solver: Any,
    rows: Rows,
    Y: Tensor,
    lam1: Tensor,
    alpha: Tensor,
    Mt: Tensor,
    spread: Tensor,
    budget: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Newton polish with continuation in ``λ2``; returns ``(α, Mt, steps)`` (iterations used).

    Far from the solution of a badly conditioned episode (``‖X‖²/λ2`` ≫ 1e3, i.e.
    ``κ = ‖X‖²/(λ2 τ)`` ≫ 1e6 at τ = 1e-3) Newton crawls, one face coordinate per step.
    Features scaled by ``1/s`` are the same problem with ``λ2·s²`` (``λ1`` unchanged, ``α``
    scale-free), so the problem at ``λ2·100^m`` (``‖X‖²/λ2 ≤ 1e3``, where FISTA in its metric
    needs tens of iterations) is solved first by FISTA, then ``λ2`` is divided by 100 per
    stage and :func:`_newton_polish` takes each stage from the last one's ``α`` (1-6 steps
    each; tests/test_solver_group_sparse.py: features scaled by up to 1e6). At most
    ``solver.polish_steps`` Newton steps per stage and ``budget`` iterations in all, a few
    kept for every later stage. ``solver`` is the :class:`.fista.GroupSparseSVMSolver` that
    calls this (its settings, and its ``_run`` for the FISTA of the first stage), typed ``Any``
    so that this module does not import :mod:`.fista`.
    """
    tau, tol, steps = float(solver.tau), float(solver.tol), int(solver.polish_steps)
    stages = [float(solver.lam2)]
    k = float(spread.max()) if spread.numel() else 0.0
    while k > tuning.POLISH_SPREAD:
        stages.append(stages[-1] * 100.0)
        k /= 100.0
    stages.reverse()
    used = torch.zeros(Y.shape[0], dtype=torch.long, device=Y.device)
    if len(stages) > 1 and budget > 3 * len(stages):
        first = replace(solver, lam2=stages[0], polish_after=0, working_set=False)
        cap = min(tuning.POLISH_FISTA, budget - 3 * len(stages))
        out = first._run(rows, Y, lam1, alpha, cap, Mt)
        alpha, Mt, used = out.alpha, out.Mt, used + out.iterations
    for i, l2 in enumerate(stages):
        left = budget - int(used.max()) - 3 * (len(stages) - 1 - i)
        if left <= 0:
            continue
        alpha, Mt, u = _newton_polish(rows, Y, lam1, alpha, Mt, l2, tau, tol, min(steps, left))
        used += u
    return alpha, Mt, used
