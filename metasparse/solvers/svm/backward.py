"""The implicit backward of the group-sparse SVM: where its meta-gradient is computed.

The dual solution ``α*`` (from :mod:`.fista`, detached) is attached to the graph of the support
features by :func:`svm_dual_root`, and the weights ``W = BST(Xᵀ(Y − α*))/λ2`` with both their
direct and their implicit path by :func:`svm_weights`. The KKT system on the active faces ×
active features (:mod:`.face`) is solved in closed form (dense) or matrix-free by
preconditioned CG (:func:`svm_backward_cg`); ``method="generic"`` differentiates the
projected-gradient fixed point with the generic :func:`metasparse.solvers.root.implicit_root`
instead (for checks). Tests check that the paths agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metasparse.solvers import products, tuning
from metasparse.solvers.linalg import padded_index
from metasparse.solvers.root import implicit_root, pcg, warn_unconverged
from metasparse.solvers.svm.face import (
    direct_face_solve,
    face_from_gradient,
    face_preconditioner,
    gram_from_forward,
    solve_on_face,
    svm_structure,
    weighted_gram,
)
from metasparse.solvers.svm.problem import (
    column_norms,
    dual_gradient,
    gradient_from_scores,
    project_simplex,
    weights_from_m,
)


def use_cg_backward(solve: str, tau: float, n: int, K: int, p: int) -> bool:
    """Whether the SVM backward runs matrix-free CG (``"cg"``, or ``"auto"`` beyond tiny
    episodes: ``n·K·p > tuning.CG_MIN_SIZE`` or more than ``tuning.DENSE_MAX_COORDS`` dual
    coordinates ``n·K``, where the dense system's cubic cost dominates) rather than the dense
    system; never at τ = 0, where the system may be singular and only the dense min-norm
    solve is right."""
    if solve not in ("auto", "dense", "cg"):
        raise ValueError(f"backward solve must be 'auto', 'dense' or 'cg', got {solve!r}")
    tiny = n * K * p <= tuning.CG_MIN_SIZE and n * K <= tuning.DENSE_MAX_COORDS
    return tau > 0 and (solve == "cg" or (solve == "auto" and not tiny))


def svm_backward_cg(
    alpha: Tensor,
    X: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    grad_alpha: Tensor | None,
    grad_weights: Tensor | None = None,
    maxiter: int = 200,
    Mt: Tensor | None = None,
    gram: tuple[Tensor, Tensor | None] | None = None,
    want_lam1: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``X̄ = −(∂_X ∇D)ᵀ u`` with ``(P H P + I − P) u = P ᾱ``, matrix-free (τ > 0).

    With ``want_lam1`` it returns ``(X̄, λ̄1)`` as well: ``∇D`` depends on ``λ1`` only through
    ``BST(M_j, λ1)``, whose derivative is ``−v̂_j`` on active features, so
    ``λ̄1 = −Σ_j ⟨v̂_j, (Xᵀu)_j⟩ (− Σ_j ⟨v̂_j, W̄_j⟩/λ2 for the weights' direct path)``, from
    products the backward computes anyway.

    With ``grad_weights`` (``W̄`` for ``W = BST(Xᵀ(Y − α))/λ2``, (T, K, p)), the direct path
    of the weights is folded in: ``M̄ = J W̄/λ2`` adds ``−X M̄ᵀ`` to ``ᾱ`` and ``(Y − α) M̄`` to
    ``X̄``, so that one (n × p) gradient is written instead of two plus a sum.

    Everything stays in the (n, K) layout with ``P`` applied as a per-example centring on the
    face mask, so nothing of size ``s × a`` is gathered. Hessian products cost two passes over
    ``X`` in its own dtype (``Uᵀ X`` then ``X Jᵀ``). PCG is preconditioned by the exact inverse
    of the same system with the group norm's curvature made isotropic per feature, built from
    one weighted Gram matrix (see below; with ``gram``, the forward's ``(X_S X_Sᵀ, S)``, no pass
    over ``X``: it is updated where few weights differ, used as it is otherwise, which weighs
    the features of ``S`` 1 whether active or not). The final ``X̄`` is closed form:
    ``(u Bᵀ + (Y − α) J[Xᵀu]ᵀ)/λ2``.
    """
    T = Y.shape[0]
    dt = X.dtype
    f64 = torch.float64
    R = (Y - alpha).to(dt)
    if Mt is None:
        Mt = products.left(R.transpose(1, 2), X)  # (T, K, p)
    safe = column_norms(Mt)  # (T, p), floored at tiny
    lam = lam1.to(dt).unsqueeze(-1)
    act = safe > lam
    p_full = X.shape[2]
    n_act = int(act.sum(1).max())
    if n_act == 0:  # W = 0 on a neighbourhood of X: no feature moves it, nor λ1
        gX = torch.zeros_like(X)
        return (gX, torch.zeros_like(lam1)) if want_lam1 else gX
    c = torch.where(act, lam / safe, torch.zeros_like(safe))  # λ1/‖M_j‖ on active features
    # preconditioner curvature per feature: 1 on active features (the top of the Hessian's own
    # range [1 − c_j, 1]), 0 elsewhere (or 1 in the forward's set S, see below). 15-shot, 5-way,
    # p = 2560 / 16000, λ1/λ_max = 0.01 … 0.5: as many CG products as with the midpoint
    # 1 − c_j/2 (which needs a full weighted Gram), but for one more at 0.01 / p = 16000 and
    # at 0.1 / p = 2560
    omega = act.to(dt)
    gathered = n_act <= tuning.GATHER_ACTIVE * p_full
    X_all, omega_all = X, omega  # for the preconditioner's Gram (from the forward's)
    idx = None
    if gathered:  # sparse solution: work on active features only
        idx, valid = padded_index(act)  # padding slots point at distinct inactive features
        X = X.gather(2, idx.unsqueeze(1).expand(-1, X.shape[1], -1)) * valid.unsqueeze(1)
        Mt = Mt.gather(2, idx.unsqueeze(1).expand(-1, Mt.shape[1], -1))
        safe, act = safe.gather(1, idx), valid
        c, omega = c.gather(1, idx) * valid, omega.gather(1, idx) * valid
        if grad_weights is not None:
            grad_weights = grad_weights.gather(2, idx.unsqueeze(1).expand(-1, Mt.shape[1], -1))
    w = torch.where(act, 1.0 - c, torch.zeros_like(safe))  # tangential curvature
    Vh = Mt / safe.unsqueeze(1)
    Bt = Mt * w.unsqueeze(1)  # BST(M)ᵀ (T, K, p)
    cVh = c.unsqueeze(1) * Vh  # c = w = 0 on inactive features: no mask needed below

    def jac(Q: Tensor, f: slice = slice(None)) -> Tensor:
        """The per-feature Jacobian of BST, ``(1 − c) I + c v̂v̂ᵀ`` on active features, applied
        to ``Q`` (T, K, |f|) on the features ``f``."""
        V = Vh[:, :, f]
        return torch.addcmul(w[:, None, f] * Q, cVh[:, :, f], (V * Q).sum(1, keepdim=True))

    # the weights' direct path: M̄ = J W̄/λ2 (its pass over X is shared with the face's below)
    Mbar = None if grad_weights is None else jac(grad_weights.to(dt)) / lam2
    K = Bt.shape[1]
    XB = products.right(X, Bt if Mbar is None else torch.cat([Bt, Mbar], 1))
    grad = gradient_from_scores(XB[..., :K].to(f64) / lam2, alpha, Y, tau)  # ∇D(α)
    m = face_from_gradient(alpha.to(f64), grad).to(f64)  # (T, n, K)
    size = m.sum(-1, keepdim=True).clamp_min(1.0)

    def proj(z: Tensor) -> Tensor:
        z = z * m
        return z - m * z.sum(-1, keepdim=True) / size

    def hess(U: Tensor) -> Tensor:  # X J[Xᵀ U] /λ2 + τ U: both passes chunk by chunk
        return products.left_then_right(X, U.to(dt).transpose(1, 2), jac).to(f64) / lam2 + tau * U

    def matvec(v: Tensor) -> Tensor:
        pv = proj(v)
        return proj(hess(pv)) + v - pv

    if grad_alpha is None:
        grad_alpha = torch.zeros_like(alpha, dtype=f64)
    if Mbar is not None:
        grad_alpha = grad_alpha.to(f64) - XB[..., K:].to(f64)
    b = proj(grad_alpha.to(f64))
    if n_act <= tuning.DIRECT_ACTIVE * p_full and int(m.sum((1, 2)).max()) <= tuning.DIRECT_FACE:
        # sparse solution, small face: one dense solve costs less than the CG steps and their
        # preconditioner (see tuning.DIRECT_FACE)
        x = direct_face_solve(alpha, X, Y, lam1, lam2, tau, m, Mt, b)
    else:
        if gram is None:
            Gw = weighted_gram(X, omega)
        else:
            # the forward's Gram, updated on the features whose weight differs when they are
            # few; with more, as it is (it weighs them 1 instead of 0; tuning.GRAM_UPDATE_SHARE)
            limit = (n_act if gathered else p_full) // tuning.GRAM_UPDATE_SHARE
            Gw = gram_from_forward(X_all, omega_all, gram, limit)
            Gw = gram[0] if Gw is None else Gw
        precond = face_preconditioner(Gw.to(f64) / lam2, m, tau)
        tol = tuning.CG_TOL.get(dt, 1e-6)
        x, res = pcg(matvec, b, tol, maxiter, precond)
        if res > tol:
            advice = f"tau = {tau:g} near 0 makes the implicit system ill-conditioned: raise tau"
            warn_unconverged("group-sparse SVM backward: CG", maxiter, res, tol, advice)
    u = proj(x).to(dt) / lam2
    UX = products.left(u.transpose(1, 2), X)  # (Xᵀu)ᵀ
    glam = None
    if want_lam1:
        lin = UX if grad_weights is None else UX + grad_weights.to(dt) / lam2
        glam = -((Vh * lin).sum(1) * act).sum(-1)
    JQ = jac(UX)  # J[Xᵀu]/λ2
    if Mbar is not None:
        JQ = JQ + Mbar
    gX = torch.cat([u, R], -1) @ torch.cat([Bt, JQ], 1)  # one (n × p) output
    if idx is not None:
        full = torch.zeros(T, gX.shape[1], p_full, dtype=dt, device=X.device)
        gX = full.scatter_(2, idx.unsqueeze(1).expand(-1, gX.shape[1], -1), gX)
    return (gX, glam.to(lam1.dtype)) if want_lam1 else gX


def _cg_grads(*args: Any, want_lam1: bool, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """:func:`svm_backward_cg` as ``(X̄, λ̄1)`` whether or not ``λ̄1`` is wanted (None if not), so
    the autograd backwards below unpack one shape."""
    out = svm_backward_cg(*args, want_lam1=want_lam1, **kwargs)
    return out if want_lam1 else (out, None)


class _SVMDualRoot(torch.autograd.Function):
    """Identity on the dual solution; closed-form KKT backward on active faces × features."""

    @staticmethod
    def forward(ctx: Any, alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, hp: tuple) -> Tensor:
        ctx.save_for_backward(alpha, X, Y, lam1)
        ctx.hp = hp
        return alpha.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_alpha: Tensor) -> tuple[Tensor | None, ...]:
        alpha, X, Y, lam1 = ctx.saved_tensors
        lam2, tau, solve = ctx.hp
        _, n, K = Y.shape
        want_x, want_lam = ctx.needs_input_grad[1], ctx.needs_input_grad[3]
        if not (want_x or want_lam):
            return None, None, None, None, None
        Xd = X.detach()
        if use_cg_backward(solve, tau, n, K, X.shape[2]):
            gX, glam = _cg_grads(alpha, Xd, Y, lam1, lam2, tau, grad_alpha, want_lam1=want_lam)
            return None, gX if want_x else None, None, glam, None
        Mt = products.left((Y - alpha).to(Xd.dtype).transpose(1, 2), Xd)
        if not bool((column_norms(Mt) > lam1.to(Mt.dtype).unsqueeze(-1)).any()):
            # no active feature: ∇D depends on neither X nor λ1 near α (BST is 0 around M)
            zx, zl = torch.zeros_like(X), torch.zeros_like(lam1)
            return None, zx if want_x else None, None, zl if want_lam else None, None
        st = svm_structure(alpha, Xd, Y, lam1, lam2, tau, Mt=Mt)
        u = solve_on_face(st, lam2, grad_alpha, project=True).to(X.dtype)
        with torch.enable_grad():
            Xg = Xd.requires_grad_(True)
            lg = lam1.detach().requires_grad_(True)
            gD = dual_gradient(alpha, Xg, Y, lg, lam2, tau)
            gX, glam = torch.autograd.grad(gD, (Xg, lg), grad_outputs=-u)
        return None, gX if want_x else None, None, glam if want_lam else None, None


class _SVMWeights(torch.autograd.Function):
    """``W = BST(Xᵀ(Y − α*))/λ2`` (T, K, p) with the implicit gradient of ``α*`` folded in."""

    @staticmethod
    def forward(
        ctx: Any,
        X: Tensor,
        alpha: Tensor,
        Y: Tensor,
        lam1: Tensor,
        Mt: Tensor | None,
        gram: Tensor | None,
        gram_mask: Tensor | None,
        hp: tuple,
    ) -> Tensor:
        lam2, _ = hp
        if Mt is None:
            Mt = products.left((Y - alpha).transpose(1, 2), X.detach())  # (T, K, p)
        ctx.save_for_backward(X, alpha, Y, lam1, Mt, gram, gram_mask)  # spare backward passes
        ctx.hp = hp
        return weights_from_m(Mt, lam1, lam2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_w: Tensor) -> tuple[Tensor | None, ...]:
        X, alpha, Y, lam1, Mt, gram, gram_mask = ctx.saved_tensors
        lam2, tau = ctx.hp
        want_x, want_lam = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        if not (want_x or want_lam):
            return (None,) * 8
        G = None if gram is None else (gram, gram_mask)
        gX, glam = _cg_grads(
            alpha,
            X.detach(),
            Y,
            lam1.detach(),
            lam2,
            tau,
            None,
            grad_w,
            Mt=Mt,
            gram=G,
            want_lam1=want_lam,
        )
        return (gX if want_x else None, None, None, glam) + (None,) * 4


def svm_weights(
    alpha: Tensor,
    support: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    *,
    Mt: Tensor | None = None,
    gram: tuple[Tensor, Tensor | None] | None = None,
) -> Tensor:
    """Primal weights ``W = BST(Xᵀ(Y − α*), λ1)/λ2`` (T, K, p) of the dual solution ``α*``,
    differentiable w.r.t. ``support`` through both the direct path and the implicit ``α*``
    (one fused backward: matrix-free CG on the KKT system, needs ``τ > 0``), and w.r.t.
    ``lam1`` when it carries a graph (e.g. ``λ1 = ratio · λ_max(support)``).

    Optional, from the solver (each spares passes over ``support``): ``Mt`` = ``(Y − α*)ᵀX``
    (T, K, p) and ``gram`` = ``(X_S X_Sᵀ, S)``, the Gram matrix (T, n, n) over the features of
    the mask ``S`` (T, p) (``None``: all features).
    """
    if not tau > 0:
        raise ValueError("svm_weights needs tau > 0 (the CG backward); use svm_dual_root")
    G, mask = (None, None) if gram is None else gram
    return _SVMWeights.apply(
        support,
        alpha.detach(),
        Y,
        lam1,
        None if Mt is None else Mt.detach(),
        G,
        mask,
        (lam2, tau),
    )


def svm_dual_root(
    alpha: Tensor,
    support: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    method: str = "closed_form",
    solve: str = "auto",
) -> Tensor:
    """Attach the group-sparse SVM dual solution ``alpha`` (T, n, K) to ``support``'s graph.

    ``method="closed_form"`` solves the KKT system of :func:`svm_dual_system` in float64, with
    ``solve="dense"`` (Cholesky of the explicit matrix), ``"cg"`` (matrix-free preconditioned
    CG, :func:`svm_backward_cg`; τ > 0 only) or ``"auto"`` (CG unless τ = 0 or the episode is
    tiny, ``n·K·p ≤ tuning.CG_MIN_SIZE = 2e4``). ``method="generic"`` differentiates the
    projected-gradient fixed point ``α = proj_Δ(α − η ∇D(α, X))`` with :func:`implicit_root`
    (dense; for checks on small problems). Both differentiate w.r.t. ``lam1`` when it carries
    a graph (``∇D`` depends on it through the block soft-threshold). At ``τ = 0``
    the dual may have several solutions; the closed form then returns the minimum-norm
    solution of the singular system.
    """
    if method == "closed_form":
        return _SVMDualRoot.apply(alpha.detach(), support, Y, lam1, (lam2, tau, solve))
    if method != "generic":
        raise ValueError(f"method must be 'closed_form' or 'generic', got {method!r}")
    with torch.no_grad():
        Xd = support.detach()
        L = torch.linalg.eigvalsh(Xd @ Xd.transpose(1, 2))[:, -1] / lam2 + tau
        eta = (1.0 / L).reshape(-1, 1, 1)

    def fixed_point(a: Tensor, X: Tensor, lam: Tensor) -> Tensor:
        return a - project_simplex(a - eta * dual_gradient(a, X, Y, lam, lam2, tau))

    return implicit_root(fixed_point, alpha, (support, lam1), solve="dense")
