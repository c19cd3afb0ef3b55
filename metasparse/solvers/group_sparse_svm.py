"""Batched, certified solver for the group-Lasso Crammer–Singer SVM of ``docs/method.md`` §2.

Primal (one task, ``X`` n×p, one-hot ``Y`` n×K, ``W`` K×p)::

    P(W) = Σ_i ℓ_τ(W x_i, y_i) + λ1 Σ_j ‖W_{:,j}‖₂ + (λ2/2) ‖W‖_F²

Dual (minimised; rows of ``α`` on the simplex, ``M = Xᵀ(Y − α)``)::

    D(α) = (1/2λ2) Σ_j ‖BST(M_j, λ1)‖² + (τ/2) ‖α − Y‖² − ⟨α, 1 − Y⟩,   W_{:,j} = BST(M_j, λ1)/λ2

The solver runs accelerated projected gradient (FISTA) on the dual for all tasks at once, with
gradient-based adaptive restarts, an optional working set of features, per-task stopping on the
relative duality gap ``(P − (−D))/max(1, |P|)`` and warm starts. It runs on detached tensors;
:func:`solve_group_sparse_svm` re-attaches the solution through the implicit-differentiation
boundary of :mod:`metasparse.solvers.implicit` (never unrolling iterations). ``λ1`` is treated as
a constant by the gradients (λ_max is not differentiated through, as in the paper's code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_LAM2 = 1000.0  # the paper's code (λ2 = 1000 with dual regularisation 1 ⇒ τ = 1/λ2)
DEFAULT_TAU = 1.0 / DEFAULT_LAM2
_METHODS = ("fista", "pgd")


# --------------------------------------------------------------------------------------------
# Small building blocks (all batched over tasks; shapes: X (T,n,p), Y/α (T,n,K), M (T,p,K)).
# --------------------------------------------------------------------------------------------


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of every row (last dim) of ``v`` onto the probability simplex."""
    k = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    ranks = torch.arange(1, k + 1, dtype=v.dtype, device=v.device)
    cond = (u - css / ranks) > 0
    rho = cond.to(torch.long).cumsum(-1).argmax(-1, keepdim=True)
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0.0)


def block_soft_threshold(M: Tensor, lam1: Tensor) -> Tensor:
    """``BST(M_j, λ1)`` for every feature row ``M_j`` (last dim = classes); ``lam1`` per task."""
    nrm = M.norm(dim=-1, keepdim=True)
    lam = lam1.reshape(-1, *([1] * (M.dim() - 1)))
    return (1.0 - lam / nrm.clamp_min(torch.finfo(M.dtype).tiny)).clamp_min(0.0) * M


def _onehot(labels: Tensor, n_way: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(labels.long(), n_way).to(dtype)


def _alpha_at_zero(Y: Tensor, tau: float) -> Tensor:
    """Optimal dual rows at ``W = 0``: ``proj_Δ(e_y + (1 − e_y)/τ)`` (uniform when τ = 0)."""
    if tau > 0:
        return project_simplex(Y + (1.0 - Y) / tau)
    return (1.0 - Y) / (Y.shape[-1] - 1)


def dual_gradient(alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float):
    """``∇D(α)`` (T,n,K); differentiable in ``alpha`` and ``X`` (used by the implicit backward)."""
    M = X.transpose(1, 2) @ (Y - alpha)
    return -(X @ block_soft_threshold(M, lam1)) / lam2 + tau * (alpha - Y) - (1.0 - Y)


def _dual_value(B: Tensor, alpha: Tensor, Y: Tensor, lam2: float, tau: float) -> Tensor:
    """``D(α)`` from ``B = BST(M(α))``."""
    return (
        (B * B).sum((1, 2)) / (2 * lam2)
        + 0.5 * tau * ((alpha - Y) ** 2).sum((1, 2))
        - (alpha * (1.0 - Y)).sum((1, 2))
    )


def _primal_value(
    scores: Tensor, B: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> Tensor:
    """``P(W)`` for ``W = Bᵀ/λ2`` given ``scores = X Wᵀ`` (T,n,K)."""
    c = scores + 1.0 - Y
    if tau > 0:
        a = project_simplex(Y + c / tau)
        loss = ((a - Y) * c).sum(-1) - 0.5 * tau * ((a - Y) ** 2).sum(-1)
    else:
        loss = c.amax(-1) - (c * Y).sum(-1)
    nrm = B.norm(dim=-1) / lam2
    return loss.sum(-1) + lam1 * nrm.sum(-1) + 0.5 * lam2 * (nrm**2).sum(-1)


def objectives(
    alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Primal ``P(W(α))``, dual value ``−D(α)`` and relative gap ``(P + D)/max(1, |P|)``."""
    B = block_soft_threshold(X.transpose(1, 2) @ (Y - alpha), lam1)
    scores = X @ B / lam2
    P = _primal_value(scores, B, Y, lam1, lam2, tau)
    D = _dual_value(B, alpha, Y, lam2, tau)
    return P, -D, (P + D) / P.abs().clamp_min(1.0)


# --------------------------------------------------------------------------------------------
# λ_max
# --------------------------------------------------------------------------------------------


def _check_inputs(support: Tensor, support_labels: Tensor, n_way: int, tau: float) -> None:
    """Validate shapes, labels, finiteness and parameters; raise ``ValueError`` naming the fix."""
    if support.dim() != 3:
        raise ValueError(f"support must be (tasks, n_support, p), got shape {tuple(support.shape)}")
    if not support.is_floating_point():
        raise ValueError(f"support must be a floating tensor, got {support.dtype}")
    if support_labels.shape != support.shape[:2]:
        raise ValueError(
            f"support_labels must have shape {tuple(support.shape[:2])}, "
            f"got {tuple(support_labels.shape)}"
        )
    if support_labels.is_floating_point() or support_labels.dtype == torch.bool:
        raise ValueError(f"support_labels must be integers, got {support_labels.dtype}")
    if n_way < 2:
        raise ValueError(f"n_way must be at least 2, got {n_way}")
    if support_labels.numel() and (
        int(support_labels.min()) < 0 or int(support_labels.max()) >= n_way
    ):
        raise ValueError(f"support_labels must lie in [0, {n_way})")
    if not torch.isfinite(support).all():
        raise ValueError(
            "support features contain NaN or Inf; fix the backbone output before the head"
        )
    if not tau >= 0:
        raise ValueError(f"tau (hinge smoothing) must be >= 0, got {tau!r}")


def lambda_max(
    support: Tensor, support_labels: Tensor, n_way: int, tau: float = DEFAULT_TAU
) -> Tensor:
    """Smallest ``λ1`` making ``W = 0`` optimal, per task: ``max_j ‖(Xᵀ(Y − α⁰))_j‖₂``.

    Exact for every ``τ > 0`` (α⁰ = proj_Δ(e_y + (1 − e_y)/τ) is then the unique hinge gradient
    at ``W = 0``; it is uniform on the wrong classes when ``τ ≤ (K−1)/K``). For ``τ = 0`` the
    uniform α⁰ gives an **upper bound**: W = 0 is optimal at this value but may stay optimal
    somewhat below it. Not differentiated (returned detached).
    """
    _check_inputs(support, support_labels, n_way, tau)
    with torch.no_grad():
        Y = _onehot(support_labels, n_way, support.dtype)
        M = support.transpose(1, 2) @ (Y - _alpha_at_zero(Y, tau))
        return M.norm(dim=-1).amax(-1)


# --------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------


@dataclass
class GroupSparseSVMResult:
    """Solution of a batch of group-sparse SVM problems.

    ``weights`` (T,K,p) carries implicit gradients w.r.t. ``support``; ``dual`` (T,n,K) is the
    (attached) dual solution; ``lam1``/``gap``/``primal``/``dual_value``/``iterations``/
    ``converged``/``features_used`` are per task (detached).
    """

    weights: Tensor
    dual: Tensor
    lam1: Tensor
    gap: Tensor
    iterations: Tensor
    primal: Tensor
    dual_value: Tensor
    converged: Tensor
    features_used: Tensor


@dataclass
class GroupSparseSVMSolver:
    """Settings of the dual solver (a small object, in the style of jaxopt solvers).

    Args:
        lam2: ridge ``λ2`` (> 0). tau: hinge smoothing ``τ ≥ 0``.
        tol: target relative duality gap. max_iter: iteration cap (tasks not converged by then
            report their gap and ``converged=False``).
        method: ``"fista"`` (accelerated, gradient-restart) or ``"pgd"`` (plain projected
            gradient; kept for comparison).
        check_every: iterations between duality-gap evaluations (each costs one extra pass).
        newton: once a task's gap is below ``newton_below``, try a Newton step on the current
            simplex faces at each gap evaluation (Hessian solved by ≤ 10 preconditioned CG steps,
            see :mod:`metasparse.solvers.implicit`); kept only where it lowers the certified
            gap, and not tried again for a task after a rejected step. On by default: it cuts
            iterations 2-3x; at p = 16000 that wins clearly, at p = 2560 it costs ≤ 16%
            (benchmarks/head_speed.md).
        working_set: restrict iterations to features whose ``‖M_j‖`` exceeds ``ws_margin·λ1``
            (re-checked on all features at every gap evaluation; the certificate always uses all
            features).
    """

    lam2: float = DEFAULT_LAM2
    tau: float = DEFAULT_TAU
    tol: float = 1e-5
    max_iter: int = 5000
    method: str = "fista"
    check_every: int = 10
    working_set: bool = False
    ws_margin: float = 0.5
    newton: bool = True
    newton_below: float = 1e-2

    def __post_init__(self) -> None:
        if not self.lam2 > 0:
            raise ValueError(f"lam2 must be > 0 (the ridge term), got {self.lam2!r}")
        if not self.tau >= 0:
            raise ValueError(f"tau must be >= 0, got {self.tau!r}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol!r}")
        if int(self.max_iter) != self.max_iter or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        if int(self.check_every) != self.check_every or self.check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {self.check_every!r}")

    @torch.no_grad()
    def run(
        self, X: Tensor, Y: Tensor, lam1: Tensor, init: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Solve (detached). Returns ``alpha, gap, iterations, primal, dual_value``.

        Tasks that reach the tolerance leave the batch (the others continue on a compacted
        batch, warm-started), so one hard episode does not make the whole batch pay.
        """
        T = Y.shape[0]
        lam2, tau = float(self.lam2), float(self.tau)
        alpha = _alpha_at_zero(Y, tau) if init is None else project_simplex(init.to(Y.dtype))
        # Lipschitz constant of ∇D: ‖X‖₂²/λ2 + τ, from the n×n Gram matrix (exact, one pass).
        gram = X @ X.transpose(1, 2)
        L = torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0.0) / lam2 + tau
        step = (1.0 / L.clamp_min(torch.finfo(X.dtype).tiny)).reshape(T, 1, 1)
        gap = torch.full((T,), float("inf"), dtype=X.dtype, device=X.device)
        iters = torch.zeros(T, dtype=torch.long, device=X.device)
        P = torch.zeros(T, dtype=X.dtype, device=X.device)
        Dv = torch.zeros_like(P)
        live = torch.arange(T, device=X.device)
        used = 0
        while live.numel() and used < self.max_iter:
            whole = live.numel() == T
            a, g, it, p_, d_, done = self._run_batch(
                *[t if whole else t[live] for t in (X, Y, lam1, alpha, step)],
                self.max_iter - used,
            )
            alpha = alpha.clone()
            alpha[live], gap[live], P[live], Dv[live] = a, g, p_, d_
            iters[live] += it
            used += int(it.max()) if it.numel() else 0
            live = live[~done]
        return alpha, gap, iters, P, Dv

    def _run_batch(
        self, X: Tensor, Y: Tensor, lam1: Tensor, alpha: Tensor, step: Tensor, max_iter: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Iterate on a batch until some task certifies (then return, to compact) or budget."""
        T = Y.shape[0]
        lam2, tau = float(self.lam2), float(self.tau)
        Xw = X
        Xt = X.transpose(1, 2).contiguous()  # (p, n) layout: the Xᵀ(Y − α) products run faster
        X64 = X.double()  # the certificate is computed in float64 (see _certify)
        Xt64 = Xt.double() if X.dtype != torch.float64 else Xt
        iters = torch.zeros(T, dtype=torch.long, device=X.device)
        done = torch.zeros(T, dtype=torch.bool, device=X.device)
        gap = torch.full((T,), float("inf"), dtype=X.dtype, device=X.device)
        P = torch.zeros(T, dtype=X.dtype, device=X.device)
        Dv = torch.zeros_like(P)
        prev = alpha.clone()
        newton_ok = torch.ones(T, dtype=torch.bool, device=X.device)
        t_k = torch.ones(T, 1, 1, dtype=X.dtype, device=X.device)
        M = Xt @ (Y - alpha)
        M_prev = M.clone()
        k = 0
        while True:
            if k % self.check_every == 0 or k >= max_iter:
                P_full, D_full, g_full, Mfull = self._certify(X64, Xt64, Y, alpha, lam1, lam2, tau)
                newly = (~done) & (g_full <= self.tol)
                gap = torch.where(done, gap, g_full)
                P = torch.where(done, P, P_full)
                Dv = torch.where(done, Dv, D_full)
                done = done | newly
                if bool(done.any()) or k >= max_iter:
                    break
                try_newton = (~done) & (g_full <= self.newton_below) & newton_ok
                if self.newton and bool(try_newton.any()):
                    cand = self._newton_step(X, Y, alpha, lam1, lam2, tau)
                    Pc, Dc, gc, Mc = self._certify(X64, Xt64, Y, cand, lam1, lam2, tau)
                    take = try_newton & (gc < g_full)
                    newton_ok = newton_ok & ~(try_newton & ~take)  # a failed try: stop trying
                    if bool(take.any()):
                        tk = take.reshape(T, 1, 1)
                        alpha = torch.where(tk, cand, alpha)
                        Mfull = torch.where(tk, Mc, Mfull)
                        gap = torch.where(take, gc, gap)
                        P = torch.where(take, Pc, P)
                        Dv = torch.where(take, Dc, Dv)
                        done = done | (take & (gc <= self.tol))
                        prev = alpha.clone()  # restart momentum after the jump
                        t_k = torch.ones_like(t_k)
                        M = Mfull
                        M_prev = M
                        if bool(done.any()):
                            break
                if self.working_set:
                    keep = (Mfull.norm(dim=-1) > self.ws_margin * lam1[:, None]).any(0)
                    if int(keep.sum()) == 0:
                        keep[0] = True
                    Xw = X[:, :, keep]
                    Xt = Xw.transpose(1, 2).contiguous()
                    M = Mfull[:, keep]
                    M_prev = Xt @ (Y - prev)
                elif k > 0:
                    M = Mfull
            if self.method == "fista":
                t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t_k * t_k))
                mom = (t_k - 1.0) / t_next
            else:
                t_next = t_k
                mom = torch.zeros_like(t_k)
            y = alpha + mom * (alpha - prev)
            My = M + mom * (M - M_prev)  # M is linear in α: no extra pass over X
            grad = -(Xw @ block_soft_threshold(My, lam1)) / lam2 + tau * (y - Y) - (1.0 - Y)
            new = project_simplex(y - step * grad)
            new = torch.where(done.reshape(T, 1, 1), alpha, new)
            M_new = Xt @ (Y - new)
            if self.method == "fista":
                # Gradient restart (O'Donoghue & Candès): momentum against the descent direction.
                restart = ((y - new) * (new - alpha)).sum((1, 2)) > 0
                t_next = torch.where(restart.reshape(T, 1, 1), torch.ones_like(t_next), t_next)
            prev, M_prev = alpha, M
            alpha, M = new, M_new
            t_k = t_next
            iters = iters + (~done).long()
            k += 1
        return alpha, gap, iters, P, Dv, done

    @staticmethod
    def _newton_step(
        X: Tensor, Y: Tensor, alpha: Tensor, lam1: Tensor, lam2: float, tau: float
    ) -> Tensor:
        """Projected Newton candidate: solve ``P H P d = −P ∇D`` on the faces, then project.

        The face is the support of ``α`` plus the zero coordinates whose gradient is below the
        mean gradient on the support (candidates to enter); the projection fixes the rest.
        """
        from metasparse.solvers.implicit import _pcg_solve, _svm_structure

        T, n, K = Y.shape
        g = dual_gradient(alpha, X, Y, lam1, lam2, tau)
        sup = alpha > 0
        mu = (g * sup).sum(-1, keepdim=True) / sup.sum(-1, keepdim=True).clamp_min(1)
        face = sup | (g < mu)
        st = _svm_structure(alpha, X, Y, lam1, lam2, tau, face=face)
        sidx, svalid, Pm = st["sidx"], st["svalid"], st["Pm"]
        gs = g.reshape(T, n * K).gather(1, sidx).double() * svalid
        rhs = -(Pm @ gs.unsqueeze(-1)).squeeze(-1)
        d_s = _pcg_solve(st, rhs, lam2, tau, K, maxiter=10) * svalid
        d = torch.zeros(T, n * K, dtype=torch.float64, device=X.device)
        d.scatter_add_(1, sidx, d_s)
        return project_simplex(alpha + d.reshape(T, n, K).to(alpha.dtype))

    @staticmethod
    def _certify(
        X: Tensor, Xt: Tensor, Y: Tensor, alpha: Tensor, lam1: Tensor, lam2: float, tau: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Primal, dual value, relative gap on all features (plus the full ``M``).

        Always evaluated in float64 (``X``/``Xt`` are given in float64): in float32 the
        cancellation in ``P + D`` at p = 16000 produced gaps of −2e-5, no certificate at 1e-5.
        """
        dt = alpha.dtype
        alpha, Y, lam1 = alpha.double(), Y.double(), lam1.double()
        M = Xt @ (Y - alpha)
        B = block_soft_threshold(M, lam1)
        P = _primal_value(X @ B / lam2, B, Y, lam1, lam2, tau)
        D = _dual_value(B, alpha, Y, lam2, tau)
        gap = (P + D) / P.abs().clamp_min(1.0)
        return P.to(dt), (-D).to(dt), gap.to(dt), M.to(dt)


def _resolve_lam1(
    support: Tensor,
    support_labels: Tensor,
    n_way: int,
    tau: float,
    lam_ratio: float | None,
    lam1: float | Tensor | None,
) -> Tensor:
    """Per-task absolute ``λ1`` from exactly one of ``lam_ratio`` (× λ_max) or ``lam1``."""
    T = support.shape[0]
    if (lam_ratio is None) == (lam1 is None):
        raise ValueError(
            "give exactly one of lam_ratio (λ1/λ_max per episode, in [0, 1]) or lam1 (absolute)"
        )
    if lam_ratio is not None:
        if not float(lam_ratio) >= 0.0:
            raise ValueError(f"lam_ratio must be >= 0 (usually in (0, 1]), got {lam_ratio!r}")
        return float(lam_ratio) * lambda_max(support, support_labels, n_way, tau=tau)
    value = torch.as_tensor(lam1, dtype=support.dtype, device=support.device).detach()
    if value.dim() == 0:
        value = value.expand(T).clone()
    if value.shape != (T,):
        raise ValueError(f"lam1 must be a float or have shape (tasks,) = ({T},)")
    if not torch.isfinite(value).all() or bool((value < 0).any()):
        raise ValueError("lam1 must be finite and >= 0")
    return value


def solve_group_sparse_svm(
    support: Tensor,
    support_labels: Tensor,
    n_way: int,
    lam_ratio: float | None = None,
    lam2: float = DEFAULT_LAM2,
    tau: float = DEFAULT_TAU,
    tol: float = 1e-5,
    lam1: float | Tensor | None = None,
    *,
    max_iter: int = 5000,
    method: str = "fista",
    working_set: bool = False,
    newton: bool = True,
    init: Tensor | None = None,
    backward: str = "auto",
) -> GroupSparseSVMResult:
    """Solve the group-sparse SVM for a batch of episodes; differentiable w.r.t. ``support``.

    Args:
        support: (tasks, n, p) features. support_labels: (tasks, n) in ``[0, n_way)``.
        lam_ratio: ``λ1/λ_max`` per episode (exactly one of ``lam_ratio``/``lam1``).
        lam1: absolute ``λ1`` (float or (tasks,)).
        lam2, tau: ridge and hinge smoothing. tol: target relative duality gap.
        max_iter, method, working_set, newton: see :class:`GroupSparseSVMSolver`.
        init: warm start for the dual (tasks, n, n_way), projected onto the simplices.
        backward: how the implicit system on active faces × active features is solved:
            ``"auto"``, ``"dense"``, ``"cg"`` (see ``implicit.svm_dual_root``) or ``"generic"``
            (dense Jacobian of the projected-gradient fixed point; for checks).

    Returns:
        :class:`GroupSparseSVMResult`. Gradients treat ``λ1`` as a constant.
    """
    from metasparse.solvers.implicit import svm_dual_root  # one autograd boundary

    _check_inputs(support, support_labels, n_way, tau)
    lam1_t = _resolve_lam1(support, support_labels, n_way, tau, lam_ratio, lam1)
    solver = GroupSparseSVMSolver(
        lam2=lam2,
        tau=tau,
        tol=tol,
        max_iter=max_iter,
        method=method,
        working_set=working_set,
        newton=newton,
    )
    Y = _onehot(support_labels, n_way, support.dtype)
    X = support.detach()
    alpha, gap, iters, P, Dv = solver.run(X, Y, lam1_t, init=init)
    if backward == "generic":
        alpha_att = svm_dual_root(alpha, support, Y, lam1_t, lam2, tau, method="generic")
    else:
        alpha_att = svm_dual_root(alpha, support, Y, lam1_t, lam2, tau, solve=backward)
    B = block_soft_threshold(support.transpose(1, 2) @ (Y - alpha_att), lam1_t)
    weights = (B / lam2).transpose(1, 2)
    with torch.no_grad():
        used = (B.detach().norm(dim=-1) > 0).to(support.dtype).mean(-1)
    return GroupSparseSVMResult(
        weights=weights,
        dual=alpha_att,
        lam1=lam1_t,
        gap=gap,
        iterations=iters,
        primal=P,
        dual_value=Dv,
        converged=gap <= tol,
        features_used=used,
    )
