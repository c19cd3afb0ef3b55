"""The group-Lasso Crammer–Singer SVM itself (``docs/method.md`` §2): its dual, certificate, λ_max.

Primal (one task, ``X`` n×p, one-hot ``Y`` n×K, ``W`` K×p)::

    P(W) = Σ_i ℓ_τ(W x_i, y_i) + λ1 Σ_j ‖W_{:,j}‖₂ + (λ2/2) ‖W‖_F²

Dual (minimised; rows of ``α`` on the simplex, ``M = Xᵀ(Y − α)``)::

    D(α) = (1/2λ2) Σ_j ‖BST(M_j, λ1)‖² + (τ/2) ‖α − Y‖² − ⟨α, 1 − Y⟩,   W_{:,j} = BST(M_j, λ1)/λ2

Everything here is a function of the problem, not of a solver: the small building blocks
(batched over tasks; shapes ``X`` (T, n, p), ``Y``/``α`` (T, n, K), ``M`` (T, p, K)), the
duality-gap certificate, ``λ_max``, the dual Hessian, and the input checks. The forward solver
(:mod:`.fista`), its Newton polish (:mod:`.polish`) and the implicit backward
(:mod:`.backward`) build on them; this module imports none of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metasparse.solvers import products
from metasparse.solvers.linalg import padded_index
from metasparse.solvers.rows import Rows
from metasparse.utils import all_finite

DEFAULT_LAM2 = 1000.0  # the paper's code (λ2 = 1000 with dual regularisation 1 ⇒ τ = 1/λ2)


DEFAULT_TAU = 1.0 / DEFAULT_LAM2


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


def column_norms(Mt: Tensor) -> Tensor:
    """``‖M_j‖`` for ``Mt`` (T, K, p), over the class dim; floored at ``tiny`` (finite gradients).

    ``Mt.norm(dim=1)`` is a strided reduction ~30x slower on CPU than this for p = 16000.
    """
    return (Mt * Mt).sum(1).clamp_min(torch.finfo(Mt.dtype).tiny).sqrt()


def shrunk(Mt: Tensor, lam: Tensor, nrm: Tensor) -> Tensor:
    """The columns ``BST(M_j, λ1)`` of ``Mt`` (B, K, p), ``lam`` (B, 1); the feature norms go
    into ``nrm`` (B, p), floored at ``tiny`` as in :func:`column_norms`. In few small ops: the
    fused solver steps run it per chunk of features, where op overhead counts."""
    nc = torch.sum(Mt * Mt, 1, out=nrm).clamp_min_(torch.finfo(Mt.dtype).tiny).sqrt_()
    shrink = torch.addcdiv(nc.new_ones(()).expand_as(nc), lam, nc, value=-1.0)  # 1 − λ1/‖M_j‖
    return Mt * shrink.clamp_min_(0.0).unsqueeze(1)


def weights_from_m(Mt: Tensor, lam1: Tensor, lam2: float) -> Tensor:
    """Primal weights ``W_j = BST(M_j, λ1)/λ2`` (T, K, p) from ``Mᵀ`` (T, K, p); ``lam1`` per
    task. Uses :func:`column_norms`, as :func:`lambda_max` does, so that ``lam_ratio = 1``
    gives exactly ``W = 0``."""
    shrink = (1.0 - lam1.unsqueeze(-1) / column_norms(Mt)).clamp_min(0.0)
    return Mt * shrink.unsqueeze(1) / lam2


def block_soft_threshold(M: Tensor, lam1: Tensor) -> Tensor:
    """``BST(M_j, λ1)`` for every feature row ``M_j`` (last dim = classes); ``lam1`` per task."""
    nrm = M.norm(dim=-1, keepdim=True)
    lam = lam1.reshape(-1, *([1] * (M.dim() - 1)))
    return (1.0 - lam / nrm.clamp_min(torch.finfo(M.dtype).tiny)).clamp_min(0.0) * M


def onehot(labels: Tensor, n_way: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(labels.long(), n_way).to(dtype)


def alpha_at_zero(Y: Tensor, tau: float) -> Tensor:
    """Optimal dual rows at ``W = 0``: ``proj_Δ(e_y + (1 − e_y)/τ)`` (uniform when τ = 0)."""
    if tau > 0:
        return project_simplex(Y + (1.0 - Y) / tau)
    return (1.0 - Y) / (Y.shape[-1] - 1)


def dual_gradient(alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float):
    """``∇D(α)`` (T,n,K); differentiable in ``alpha`` and ``X`` (used by the implicit backward)."""
    M = X.transpose(1, 2) @ (Y - alpha)
    return gradient_from_scores(X @ block_soft_threshold(M, lam1) / lam2, alpha, Y, tau)


def gradient_from_scores(S: Tensor, alpha: Tensor, Y: Tensor, tau: float) -> Tensor:
    """``∇D(α) = −S + τ(α − Y) − (1 − Y)`` from the scores ``S = X Wᵀ`` at ``α``."""
    return -S + tau * (alpha - Y) - (1.0 - Y)


def dual_objective(
    nrm: Tensor, alpha: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> Tensor:
    """``D(α)`` (minimised; float64) from the feature norms ``‖M_j‖`` at ``α``."""
    ex = (nrm - lam1.unsqueeze(-1)).clamp_min(0.0)
    dev = alpha - Y
    D = (ex * ex).sum(-1) / (2 * lam2) + 0.5 * tau * (dev * dev).sum((1, 2))
    return D - (alpha * (1.0 - Y)).sum((1, 2))


def certificate(
    S: Tensor, nrm: Tensor, alpha: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Primal ``P``, dual value ``−D`` and relative gap at a feasible ``α``, in float64.

    Inputs: scores ``S = X Wᵀ`` and feature norms ``‖M_j‖`` for ``M = Xᵀ(Y − α)``,
    ``W_j = BST(M_j)/λ2``. The gap is summed from per-example Fenchel–Young gaps
    ``ℓ_τ(s_i) − ⟨α_i − y_i, s_i + 1 − y_i⟩ + (τ/2)‖α_i − y_i‖² ≥ 0`` (the group-norm side
    of ``P + D`` vanishes identically for this ``W``): no cancellation between the large ``P``
    and ``D``, so a float32 ``X`` still certifies 1e-5 (``P + D`` computed directly did not).
    """
    S, nrm, alpha, Y, lam1 = S.double(), nrm.double(), alpha.double(), Y.double(), lam1.double()
    c = S + 1.0 - Y
    loss = _hinge(c, Y, tau)
    dev = alpha - Y
    fy = loss - (dev * c).sum(-1) + 0.5 * tau * (dev * dev).sum(-1)
    ex = (nrm - lam1.unsqueeze(-1)).clamp_min(0.0)  # λ2 ‖W_j‖
    P = loss.sum(-1) + (lam1 * ex.sum(-1) + 0.5 * (ex * ex).sum(-1)) / lam2
    D = dual_objective(nrm, alpha, Y, lam1, lam2, tau)
    return P, -D, fy.sum(-1).clamp_min(0.0) / P.abs().clamp_min(1.0)


def _hinge(c: Tensor, Y: Tensor, tau: float) -> Tensor:
    """``ℓ_τ`` per example from ``c = s + 1 − e_y`` (the smoothed hinge; the plain one at 0)."""
    if tau > 0:
        a = project_simplex(Y + c / tau)
        return ((a - Y) * c).sum(-1) - 0.5 * tau * ((a - Y) ** 2).sum(-1)
    return c.amax(-1) - (c * Y).sum(-1)


@torch.no_grad()
def certify_weights(
    X: Tensor, Y: Tensor, alpha: Tensor, W: Tensor, lam1: Tensor, lam2: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``P(W)``, ``−D(α)`` and the relative gap ``(P(W) + D(α)) / max(1, |P(W)|)`` for the
    classifier ``W`` (T, K, p) as it is, everything recomputed from ``X`` in float64.

    A bound on ``W``'s own suboptimality that does not assume ``W = W(α)`` exactly: for
    float32 features the two differ by the rounding of ``M = Xᵀ(Y − α)``, which is large when
    the features are badly scaled, and :func:`certificate` (exact for ``W(α)``) can then
    certify a classifier that is far from optimal. The solver checks its final answer for
    float32 features with this.
    """
    X, Y, alpha, W, lam = X.double(), Y.double(), alpha.double(), W.double(), lam1.double()
    loss = _hinge(X @ W.transpose(1, 2) + 1.0 - Y, Y, tau)
    col = (W * W).sum(1).sqrt()  # ‖W_j‖ over classes, (T, p)
    P = loss.sum(-1) + lam * col.sum(-1) + 0.5 * lam2 * (W * W).sum((1, 2))
    nrm = column_norms((Y - alpha).transpose(1, 2) @ X)
    D = dual_objective(nrm, alpha, Y, lam, lam2, tau)
    return P, -D, (P + D).clamp_min(0.0) / P.abs().clamp_min(1.0)


def objectives(
    alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Primal ``P(W(α))``, dual value ``−D(α)`` and relative gap ``(P + D)/max(1, |P|)``.

    ``α`` must be dual-feasible (rows on the simplex); results are float64.
    """
    M = X.transpose(1, 2) @ (Y - alpha).to(X.dtype)
    B = block_soft_threshold(M, lam1.to(X.dtype))
    return certificate(X @ B / lam2, M.norm(dim=-1), alpha, Y, lam1, lam2, tau)


def check_inputs(
    support: Tensor, support_labels: Tensor, n_way: int, tau: float, finite: bool = True
) -> None:
    """Validate shapes, labels, finiteness and parameters; raise ``ValueError`` naming the fix.

    ``finite=False`` skips the NaN/Inf scan (a pass over ``support``), for callers that have
    made it already (the heads: :func:`metasparse.heads.base.check_episode`).
    """
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
    if finite and not all_finite(support):
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
    check_inputs(support, support_labels, n_way, tau)
    return lambda_max_unchecked(support, onehot(support_labels, n_way, support.dtype), tau)


@torch.no_grad()
def lambda_max_unchecked(support: Tensor, Y: Tensor, tau: float) -> Tensor:
    """:func:`lambda_max` on checked inputs (one-hot ``Y``)."""
    # same layout and operation order as the weights of solve_group_sparse_svm, so that
    # lam_ratio = 1 gives exactly W = 0
    return column_norms(m_at_zero(support.detach(), Y, tau)).amax(-1)


def lambda_max_graph(support: Tensor, Y: Tensor, tau: float) -> Tensor:
    """Zero-valued (T,) tensor whose gradient is that of ``λ_max(support)``: added to the
    detached ``λ_max`` it keeps the value bitwise (so ``lam_ratio = 1`` still gives ``W = 0``)
    and carries the exact derivative, through the maximising feature's norm (α⁰ depends on the
    labels only)."""
    a0 = alpha_at_zero(Y.double(), tau).to(support.dtype)
    lam_max = column_norms((Y - a0).transpose(1, 2) @ support).amax(-1)
    return lam_max - lam_max.detach()


def m_at_zero(X: Tensor, Y: Tensor, tau: float) -> Tensor:
    """``Mᵀ = (Y − α⁰)ᵀ X`` (T, K, p), with ``α⁰`` in float64 cast to ``X``'s dtype exactly as
    the solver casts its iterates (so ``λ_max`` and the weights at ``α⁰`` agree bitwise)."""
    a0 = alpha_at_zero(Y.double(), tau)
    return products.left((Y.double() - a0).to(X.dtype).transpose(1, 2), X)


def scores(rows: Rows, Mt: Tensor, lam1: Tensor, lam2: float) -> tuple[Tensor, Tensor]:
    """Feature norms ``‖M_j‖`` (float64) and scores ``X Wᵀ`` (float64) for ``Mt`` (T, K, p)."""
    nrm = Mt.new_empty(Mt.shape[0], Mt.shape[2])
    S = rows.right(shrunk(Mt, lam1.to(Mt.dtype).unsqueeze(-1), nrm))
    return nrm.double(), S.double() / lam2


def dual_hessian(
    rows: Rows,
    Mt: Tensor,
    nrm: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    chunk: int = 1024,
    slots: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``∇²D`` (T, nK, nK) float64 at the point whose ``M`` is ``Mt``, or its restriction to
    the coordinates ``slots = (i, k)`` (T, s) of the flattened ``α`` (T, s, s).

    ``τI + Σ_j x_j x_jᵀ ⊗ J_j/λ2`` over the active features, with ``J_j = (1 − c_j)I +
    c_j v̂_j v̂_jᵀ``, ``c_j = λ1/‖M_j‖`` (the block soft-threshold's Jacobian). Features are
    gathered in chunks, so memory stays at ``s × chunk`` whatever ``p``; products and sums run
    in ``dtype``. The Newton polish (float64) and the dense backward (``X``'s dtype) use it.
    """
    T, K, _ = Mt.shape
    n = rows.X.shape[1]
    dev = Mt.device
    if slots is None:
        i_s = torch.arange(n, device=dev).repeat_interleave(K).expand(T, -1)
        k_s = torch.arange(K, device=dev).repeat(n).expand(T, -1)
    else:
        i_s, k_s = slots
    s = i_s.shape[1]
    lam = lam1.to(nrm.dtype).unsqueeze(-1)
    idx, valid = padded_index(nrm > lam)
    width = min(chunk, idx.shape[1])
    Gw = torch.zeros(T, n, n, dtype=dtype, device=dev)
    H = torch.zeros(T, s, s, dtype=dtype, device=dev)
    # two (T, s, chunk) work buffers reused by every chunk: fresh ones would be page-faulted
    # in each time (at 15-shot, p = 16000 that cost more than the products)
    bufs = torch.empty(2, T * s * width, dtype=dtype, device=dev)
    for a0 in range(0, idx.shape[1], chunk):
        ic, vc = idx[:, a0 : a0 + chunk], valid[:, a0 : a0 + chunk]
        Xc = rows.gather_features(ic, vc).to(dtype)  # (T, n, a), 0 on padding
        a = Xc.shape[2]
        r = nrm.gather(1, ic).to(dtype)
        c = torch.where(vc, lam.to(dtype) / r, torch.zeros_like(r))
        w = torch.where(vc, 1.0 - c, torch.zeros_like(c))
        Gw.baddbmm_(Xc * w.unsqueeze(1), Xc.transpose(1, 2))
        U = Mt.gather(2, ic.unsqueeze(1).expand(T, K, -1)).to(dtype) * (c.sqrt() / r).unsqueeze(1)
        Z = bufs[0, : T * s * a].view(T, s, a)  # rows x_i ⊙ √c v̂_k of the slots (i, k)
        if slots is None:  # every coordinate, in the (n, K) row-major order
            torch.mul(Xc.unsqueeze(2), U.unsqueeze(1), out=Z.view(T, n, K, a))
        else:
            Zu = bufs[1, : T * s * a].view(T, s, a)
            for t in range(T):  # row gathers (index_select copies whole rows)
                torch.index_select(Xc[t], 0, i_s[t], out=Z[t])
                torch.index_select(U[t], 0, k_s[t], out=Zu[t])
            Z.mul_(Zu)
        H.baddbmm_(Z, Z.transpose(1, 2))  # Σ_j c_j (x_j ⊗ v̂_j)(x_j ⊗ v̂_j)ᵀ
    H, Gw = H.double(), Gw.double()
    Gs = Gw.gather(1, i_s.unsqueeze(-1).expand(T, s, n)).gather(2, i_s.unsqueeze(1).expand(T, s, s))
    H += Gs * (k_s.unsqueeze(2) == k_s.unsqueeze(1))
    H /= lam2
    H.diagonal(dim1=1, dim2=2).add_(tau)
    return H
