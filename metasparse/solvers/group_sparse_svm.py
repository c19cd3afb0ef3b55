"""Batched, certified solver for the group-Lasso Crammer–Singer SVM of ``docs/method.md`` §2.

Primal (one task, ``X`` n×p, one-hot ``Y`` n×K, ``W`` K×p)::

    P(W) = Σ_i ℓ_τ(W x_i, y_i) + λ1 Σ_j ‖W_{:,j}‖₂ + (λ2/2) ‖W‖_F²

Dual (minimised; rows of ``α`` on the simplex, ``M = Xᵀ(Y − α)``)::

    D(α) = (1/2λ2) Σ_j ‖BST(M_j, λ1)‖² + (τ/2) ‖α − Y‖² − ⟨α, 1 − Y⟩,   W_{:,j} = BST(M_j, λ1)/λ2

The solver runs FISTA on the dual for all tasks at once, in a fixed metric that handles the few
large eigenvalues of the Gram matrix ``X Xᵀ`` exactly (:class:`_Metric`; its prox is an ``r·K``
semismooth-Newton problem per task), with gradient restarts, a working set of features when the
solution is sparse, per-task stopping on the relative duality gap ``(P − (−D))/max(1, |P|)``
(summed from per-example Fenchel–Young gaps, so float32 features still certify 1e-5) and warm
starts. It runs on detached tensors; :func:`solve_group_sparse_svm` re-attaches the solution
through the implicit-differentiation boundary of :mod:`metasparse.solvers.implicit` (never
unrolling iterations). ``λ1`` is treated as a constant by the gradients (λ_max is not
differentiated through, as in the paper's code).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

from metasparse.solvers import products
from metasparse.utils import all_finite

DEFAULT_LAM2 = 1000.0  # the paper's code (λ2 = 1000 with dual regularisation 1 ⇒ τ = 1/λ2)
DEFAULT_TAU = 1.0 / DEFAULT_LAM2
_METHODS = ("vmfista", "fista", "pgd")
# Largest r·K of the metric's prox system. Conv-4 Omniglot features, 20-way 5-shot: rank 3
# (r·K = 60) took 4.2 s for 4 batches where rank 8 (160) took 5.6 s, despite 102 vs 53
# iterations; at 5-way the cap (r = 12) is above the default rank 8 (benchmarks/head_speed.md).
_PROX_SIZE = 64
# The Newton polish (episodes FISTA has not certified after `polish_after` iterations) forms
# and factorises the dense (n·K)² dual Hessian: only up to n·K = 512 (10-way 5-shot, 5-way
# 15-shot...), and in λ2-continuation stages whose ‖X‖²/λ2 is at most 1e3 (κ ≤ 1e6 at τ = 1e-3).
_POLISH_SIZE = 512
_POLISH_SPREAD = 1e3
_POLISH_FISTA = 30  # FISTA iterations on the first stage (100 took more in all: 201 vs 147)
# The smallest scale of the metric the adaptive steps of sparse solutions may take (see
# _adapt_scale): the steps measured at λ1/λ_max = 0.5 met 5-30% of the metric's curvature.
_SCALE_MIN = 1.0 / 16.0
# Points of the segment searched by the ridge start (_ridge_start): a step of 0.1 found the
# iterations of a step of 0.05, one of 0.2 did not (15-shot p = 16000, λ1/λ_max = 0.1: 8.4
# iterations with 11 or 21 points, 9.3 with 6; 5-shot 8 and 9.6)
_RIDGE_GRID = 11
# ... and it runs where X has at least this many entries: its 3-7 ms of small ops (the prox of
# its FISTA steps) then cost less than the passes it saves. 8 episodes, 5-way, λ1/λ_max = 0.1,
# fwd+bwd new/old: 15-shot p = 16000 (9.6M entries) 0.94, 5-shot p = 16000 (3.2M) 0.92;
# 15-shot p = 2560 (1.5M) 1.07, 5-shot p = 2560 1.24, 1-shot p = 2560 1.25 (0.01: 0.87 / 0.99 at
# 15-shot p = 16000 / 2560, 1.03 at 1-shot p = 16000)
_RIDGE_MIN_SIZE = 2.5e6


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


def column_norms(Mt: Tensor) -> Tensor:
    """``‖M_j‖`` for ``Mt`` (T, K, p), over the class dim; floored at ``tiny`` (finite gradients).

    ``Mt.norm(dim=1)`` is a strided reduction ~30x slower on CPU than this for p = 16000.
    """
    return (Mt * Mt).sum(1).clamp_min(torch.finfo(Mt.dtype).tiny).sqrt()


def _shrunk(Mt: Tensor, lam: Tensor, nrm: Tensor) -> Tensor:
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
    return _gradient_from_scores(X @ block_soft_threshold(M, lam1) / lam2, alpha, Y, tau)


def _gradient_from_scores(S: Tensor, alpha: Tensor, Y: Tensor, tau: float) -> Tensor:
    """``∇D(α) = −S + τ(α − Y) − (1 − Y)`` from the scores ``S = X Wᵀ`` at ``α``."""
    return -S + tau * (alpha - Y) - (1.0 - Y)


def _dual_objective(
    nrm: Tensor, alpha: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> Tensor:
    """``D(α)`` (minimised; float64) from the feature norms ``‖M_j‖`` at ``α``."""
    ex = (nrm - lam1.unsqueeze(-1)).clamp_min(0.0)
    dev = alpha - Y
    D = (ex * ex).sum(-1) / (2 * lam2) + 0.5 * tau * (dev * dev).sum((1, 2))
    return D - (alpha * (1.0 - Y)).sum((1, 2))


def _certificate(
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
    if tau > 0:
        a = project_simplex(Y + c / tau)
        loss = ((a - Y) * c).sum(-1) - 0.5 * tau * ((a - Y) ** 2).sum(-1)
    else:
        loss = c.amax(-1) - (c * Y).sum(-1)
    dev = alpha - Y
    fy = loss - (dev * c).sum(-1) + 0.5 * tau * (dev * dev).sum(-1)
    ex = (nrm - lam1.unsqueeze(-1)).clamp_min(0.0)  # λ2 ‖W_j‖
    P = loss.sum(-1) + (lam1 * ex.sum(-1) + 0.5 * (ex * ex).sum(-1)) / lam2
    D = _dual_objective(nrm, alpha, Y, lam1, lam2, tau)
    return P, -D, fy.sum(-1).clamp_min(0.0) / P.abs().clamp_min(1.0)


def objectives(
    alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Primal ``P(W(α))``, dual value ``−D(α)`` and relative gap ``(P + D)/max(1, |P|)``.

    ``α`` must be dual-feasible (rows on the simplex); results are float64.
    """
    M = X.transpose(1, 2) @ (Y - alpha).to(X.dtype)
    B = block_soft_threshold(M, lam1.to(X.dtype))
    return _certificate(X @ B / lam2, M.norm(dim=-1), alpha, Y, lam1, lam2, tau)


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
    if not all_finite(support):
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
    return _lambda_max(support, _onehot(support_labels, n_way, support.dtype), tau)


@torch.no_grad()
def _lambda_max(support: Tensor, Y: Tensor, tau: float) -> Tensor:
    """:func:`lambda_max` on checked inputs (one-hot ``Y``)."""
    # same layout and operation order as the weights of solve_group_sparse_svm, so that
    # lam_ratio = 1 gives exactly W = 0
    return column_norms(_m_at_zero(support.detach(), Y, tau)).amax(-1)


def _lambda_max_graph(support: Tensor, Y: Tensor, tau: float) -> Tensor:
    """Zero-valued (T,) tensor whose gradient is that of ``λ_max(support)``: added to the
    detached ``λ_max`` it keeps the value bitwise (so ``lam_ratio = 1`` still gives ``W = 0``)
    and carries the exact derivative, through the maximising feature's norm (α⁰ depends on the
    labels only)."""
    a0 = _alpha_at_zero(Y.double(), tau).to(support.dtype)
    lam_max = column_norms((Y - a0).transpose(1, 2) @ support).amax(-1)
    return lam_max - lam_max.detach()


def _m_at_zero(X: Tensor, Y: Tensor, tau: float) -> Tensor:
    """``Mᵀ = (Y − α⁰)ᵀ X`` (T, K, p), with ``α⁰`` in float64 cast to ``X``'s dtype exactly as
    the solver casts its iterates (so ``λ_max`` and the weights at ``α⁰`` agree bitwise)."""
    a0 = _alpha_at_zero(Y.double(), tau)
    return products.left((Y.double() - a0).to(X.dtype).transpose(1, 2), X)


# --------------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------------


class _Rows:
    """The features ``X`` (T, n, p) of a subset of tasks, for the solver's two products.

    On the CPU a subset is used through per-task views: copying ``X[keep]`` would cost about
    three passes over ``X`` (a fresh (B, n, p) tensor is page-faulted in), more than the
    remaining iterations of a batch that is mostly certified save. Other devices gather.
    """

    def __init__(self, X: Tensor, ids: list[int] | None = None) -> None:
        self.X, self.ids = X, ids

    def subset(self, keep: Tensor) -> _Rows:
        """The rows of the tasks ``keep`` (a (B,) bool mask or index tensor of this subset)."""
        if self.X.device.type != "cpu":
            return _Rows(self.X[keep])
        ids = list(range(self.X.shape[0])) if self.ids is None else self.ids
        sel = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        picked = [ids[i] for i in sel.tolist()]
        return _Rows(self.X, None if picked == list(range(self.X.shape[0])) else picked)

    def left(self, A: Tensor, out: Tensor | None = None) -> Tensor:
        """``A @ X`` for ``A`` (B, m, n): (B, m, p), written to ``out`` if given."""
        if self.ids is None:
            return products.left(A, self.X, out=out)
        if out is None:
            out = A.new_empty(A.shape[0], A.shape[1], self.X.shape[2])
        for i, t in enumerate(self.ids):
            products.left(A[i : i + 1], self.X[t : t + 1], out=out[i : i + 1])
        return out

    def right(self, W: Tensor) -> Tensor:
        """``X Wᵀ`` for ``W`` (B, m, p): (B, n, m)."""
        if self.ids is None:
            return products.right(self.X, W)
        ids = enumerate(self.ids)
        return torch.cat([products.right(self.X[t : t + 1], W[i : i + 1]) for i, t in ids])

    def left_then_right(
        self, A: Tensor, fn: Callable[[Tensor, slice], Tensor], left: Tensor | None = None
    ) -> Tensor:
        """:func:`.products.left_then_right` on these rows (a subset runs its two products
        whole)."""
        if self.ids is None:
            return products.left_then_right(self.X, A, fn, left)
        return self.right(fn(self.left(A, out=left), slice(None)))  # per task: whole

    def fuses(self) -> bool:
        """Whether a FISTA step should fuse its two passes into one :meth:`left_then_right`
        (:func:`.products.fuses`; a subset runs its products whole)."""
        return self.ids is None and products.fuses(self.X)

    def gram(self) -> Tensor:
        """``X Xᵀ`` per task (B, n, n), in float64."""
        if self.ids is None:
            return products.gram(self.X).double()
        return torch.cat([products.gram(self.X[t : t + 1]) for t in self.ids]).double()

    def gather_features(self, idx: Tensor, valid: Tensor) -> Tensor:
        """``X[:, :, idx]`` per task (B, n, w), zero where ``valid`` is False (one copy)."""
        if self.ids is None:
            out = self.X.gather(2, idx.unsqueeze(1).expand(-1, self.X.shape[1], -1))
        else:
            out = self.X.new_empty(len(self.ids), self.X.shape[1], idx.shape[1])
            for i, t in enumerate(self.ids):
                torch.index_select(self.X[t], 1, idx[i], out=out[i])
        return out.mul_(valid.unsqueeze(1))


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
class _Metric:
    """The fixed metric ``Q = c·I + V diag(Λ) Vᵀ ⊗ I_K`` (per task) that majorises ``∇²D``.

    ``∇²D ≼ (G/λ2) ⊗ I_K + τ I`` with ``G = X Xᵀ`` (the block soft-threshold is 1-Lipschitz);
    keeping the top ``r`` eigenpairs of ``G/λ2`` exactly and replacing the rest by the
    ``(r+1)``-th eigenvalue gives ``Q ≽`` that bound. The few large eigenvalues of ``G`` (the
    features' mean and class means) are what make plain FISTA slow; ``Q`` removes them.
    """

    c: Tensor  # (T, 1, 1) float64: curvature of the bulk
    V: Tensor  # (T, n, r) float64: deflated directions
    lam: Tensor  # (T, r) float64: extra curvature along V (≥ 0)
    top: Tensor  # (T, 1, 1) float64: ‖X‖²/λ2 + τ (the safe scalar metric)
    VV: Tensor  # (T, n, r, r): V_it V_iu, reused by every prox
    gram: Tensor | None = None  # (T, n, n) float64: X Xᵀ (handed on to the backward)
    # the last Newton factorisation and the support pattern it was built for (reused while the
    # pattern is unchanged, which is most steps once the faces have settled)
    _pattern: Tensor | None = None
    _factor: Tensor | None = None
    _consts: tuple | None = None  # the prox's per-metric constants (see _prox_constants)

    @classmethod
    def from_features(
        cls, X: Tensor, lam2: float, tau: float, rank: int, n_way: int | None = None
    ) -> _Metric:
        return cls.from_gram((X @ X.transpose(1, 2)).double(), lam2, tau, rank, n_way)

    @classmethod
    def from_gram(
        cls, gram: Tensor, lam2: float, tau: float, rank: int, n_way: int | None = None
    ) -> _Metric:
        """The metric from the Gram matrix ``X Xᵀ`` (T, n, n), float64."""
        T, n, _ = gram.shape
        th, V = torch.linalg.eigh(gram / lam2)  # ascending
        th = th.clamp_min(0.0)
        top = th[:, -1] + tau
        # deflate at most `rank` directions, and never so deep that the bulk curvature c falls
        # below 1e-3 of the top (the prox's r·K system would become ill-posed)
        deep = (th.flip(-1)[:, 1:] + tau >= 1e-3 * top.unsqueeze(-1)).sum(-1)
        r = max(0, min(int(rank), n - 1, int(deep.min()) if T else 0))
        if n_way is not None and r > 0:  # the prox solves an r·K system per Newton step:
            r = min(r, max(1, _PROX_SIZE // n_way))  # keep it small when K is large
        c = th[:, n - 1 - r] + tau
        c = torch.maximum(c, 1e-12 * (1.0 + top))  # τ = 0 with all-zero features: c > 0
        top = torch.maximum(top, c)
        Vr = V[:, :, n - r :]
        lam = (th[:, n - r :] + tau - c.unsqueeze(-1)).clamp_min(0.0)
        return cls(
            c=c.reshape(T, 1, 1),
            V=Vr,
            lam=lam,
            top=top.reshape(T, 1, 1),
            VV=Vr.unsqueeze(-1) * Vr.unsqueeze(-2),
            gram=gram,
        )

    def index(self, keep: Tensor) -> _Metric:
        return _Metric(self.c[keep], self.V[keep], self.lam[keep], self.top[keep], self.VV[keep])

    def apply(self, z: Tensor) -> Tensor:
        """``Q z`` for ``z`` (T, n, K)."""
        if self.V.shape[-1] == 0:
            return self.c * z
        return self.c * z + self.V @ (self.lam.unsqueeze(-1) * (self.V.transpose(1, 2) @ z))

    def _prox_constants(self, K: int) -> tuple:
        """What every prox with this metric reuses (built once per metric): ``V√Λ``,
        ``V√Λ/c``, the Newton system's scaling ``√(Λ/c)`` per (direction, class), ``max √Λ``,
        the identities and ``V_it V_iu``."""
        if self._consts is None or self._consts[2].shape[1] != self.V.shape[-1] * K:
            T, _, r = self.V.shape
            sl = self.lam.sqrt()  # (T, r)
            Vs = self.V * sl.unsqueeze(1)
            d = (self.lam / self.c.reshape(T, 1)).sqrt().repeat_interleave(K, dim=1)  # (T, rK)
            eyeK = torch.eye(K, dtype=self.V.dtype, device=self.V.device).reshape(1, 1, K, 1, K)
            eye = torch.eye(r * K, dtype=self.V.dtype, device=self.V.device)
            VVf = self.VV.reshape(T, -1, r * r).transpose(1, 2)  # (T, r², n)
            self._consts = (Vs, Vs / self.c, d, sl.amax(-1), eye, eyeK, VVf)
        return self._consts

    def prox(
        self, y: Tensor, g: Tensor, Z: Tensor, scale: Tensor | None = None, max_newton: int = 50
    ) -> tuple[Tensor, Tensor]:
        """``argmin_{rows ∈ Δ} ⟨g, α⟩ + ½‖α − y‖²_Q``, and its multipliers ``Z`` (T, r, K).

        The low-rank part is dualised, ``½λ_t‖v_tᵀz‖² = max_z √λ_t⟨z, v_tᵀz⟩ − ½‖z‖²``, so that
        ``α(Z) = proj_Δ(y − (g + V√Λ Z)/c)`` row by row and ``Z`` maximises a concave,
        piecewise-quadratic ``ψ`` of ``r·K`` variables per task. Semismooth Newton (SPD system
        ``I + d S d``, ``S = VᵀJV``, Cholesky) with an Armijo backtracking on ``ψ``, warm-started
        from the previous ``Z``; tasks where it does not converge take the safe scalar step.
        ``scale`` (T, 1, 1), when given, replaces ``Q`` by ``s·Q`` per task (the adaptive steps
        of :meth:`GroupSparseSVMSolver._run`).
        """
        T, _, K = y.shape
        r = self.V.shape[-1]
        c = self.c if scale is None else self.c * scale
        if r == 0:
            return project_simplex(y - g / c), Z
        Vs, Vc, d, slmax, eye, eyeK, VVf = self._prox_constants(K)
        if scale is not None:  # s·Q: V√(sΛ) and V√(sΛ)/(sc); the Newton system is unchanged
            rs = scale.sqrt()
            Vs, Vc, slmax = Vs * rs, Vc / rs, slmax * rs.reshape(T)
        base = y - g / c
        gy = (g * y).sum((1, 2))
        half_c = 0.5 * c

        # ψ(Z) = ⟨g, α⟩ + ½c‖α − y‖² + ⟨Z, √Λ Vᵀ(α − y)⟩ − ½‖Z‖², with α = α(Z); written
        # as below it takes 10 small ops instead of 15 (at 1-shot, p = 2560, the prox is about
        # a third of a solve's ops, and op overhead is its whole cost)
        def at(Zc: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            a = project_simplex(torch.baddbmm(base, Vc, Zc, alpha=-1.0))
            dev = a - y
            su = Vs.transpose(1, 2) @ dev  # √Λ Vᵀ(α − y)
            psi = ((g + half_c * dev) * dev).sum((1, 2)) + gy + (Zc * (su - 0.5 * Zc)).sum((1, 2))
            return a, psi, su - Zc, dev  # α(Z), ψ(Z), ∇ψ(Z), α(Z) − y

        a, psi, grad, dev = at(Z)
        ok = torch.zeros(T, dtype=torch.bool, device=y.device)
        for _ in range(max_newton):
            size = 1.0 + Z.abs().amax((1, 2)) + slmax * dev.abs().amax((1, 2))
            ok = grad.abs().amax((1, 2)) <= 1e-11 * size
            if bool(ok.all()):
                break
            pattern = a > 0
            if self._pattern is not None and torch.equal(pattern, self._pattern):
                L = self._factor
            else:
                sup = pattern.to(y.dtype)
                sn = sup / sup.sum(-1, keepdim=True).sqrt()
                S1 = (VVf @ sup).reshape(T, r, r, K).transpose(2, 3)  # Σ_i V_it V_iu [k ∈ S_i]
                Vn = (self.V.unsqueeze(-1) * sn.unsqueeze(2)).reshape(T, -1, r * K)
                S = (S1.unsqueeze(-1) * eyeK).reshape(T, r * K, r * K) - Vn.transpose(1, 2) @ Vn
                L, _ = torch.linalg.cholesky_ex(eye + d.unsqueeze(-1) * S * d.unsqueeze(1))
                self._pattern, self._factor = pattern, L
            step = torch.cholesky_solve(grad.reshape(T, r * K, 1), L).reshape(T, r, K)
            slope = (grad * step).sum((1, 2))  # > 0: ascent direction
            t = torch.ones(T, 1, 1, dtype=y.dtype, device=y.device)
            todo = ~ok
            for _ in range(30):  # Armijo backtracking, per task
                Z_n = Z + t * step
                a_n, psi_n, grad_n, dev_n = at(Z_n)
                good = psi_n >= psi + 1e-4 * t.reshape(T) * slope - 1e-14 * psi.abs()
                acc = todo & good
                if bool(acc.all()):  # the usual case: the full step, for every task
                    Z, a, psi, grad, dev = Z_n, a_n, psi_n, grad_n, dev_n
                elif bool(acc.any()):
                    m3 = acc.reshape(T, 1, 1)
                    Z = torch.where(m3, Z_n, Z)
                    a, psi, grad, dev = (
                        torch.where(m3, a_n, a),
                        torch.where(acc, psi_n, psi),
                        torch.where(m3, grad_n, grad),
                        torch.where(m3, dev_n, dev),
                    )
                todo = todo & ~good
                if not bool(todo.any()):
                    break
                t = torch.where(todo.reshape(T, 1, 1), 0.5 * t, t)
        if not bool(ok.all()):
            bad = (~ok).reshape(T, 1, 1)
            a = torch.where(bad, project_simplex(y - g / self.top), a)
            Z = torch.where(bad, torch.zeros_like(Z), Z)
        return a, Z


class SolverOutput(NamedTuple):
    """What :meth:`GroupSparseSVMSolver.run` returns, per task (detached)."""

    alpha: Tensor  # (T, n, K) float64: the best certified dual point
    gap: Tensor  # (T,) float64: its relative duality gap
    iterations: Tensor  # (T,) long
    primal: Tensor  # (T,) float64
    dual_value: Tensor  # (T,) float64
    Mt: Tensor  # (T, K, p): (Y − α)ᵀX at ``alpha``, in X's dtype, as the certificate used it
    gram: Tensor  # (T, n, n) float64: X_S X_Sᵀ over the features S of ``gram_mask``
    gram_mask: Tensor | None  # (T, p) bool, or None for all features
    scale: Tensor | None = None  # (T, 2) float64: adaptive metric scale and its floor (_run)


@dataclass
class GroupSparseSVMSolver:
    """Settings of the batched dual solver (a small object, in the style of jaxopt solvers).

    The default method, ``"vmfista"``, is FISTA in the fixed metric of :class:`_Metric`: the
    ``rank`` largest eigenvalues of the Gram matrix are handled exactly, so the iteration count
    no longer depends on them (15-shot, p = 2560, λ1/λ_max = 0.01: 6 iterations instead of 60
    for plain FISTA; benchmarks/head_speed.md). Momentum restarts when it points uphill
    (O'Donoghue & Candès, in the metric ``Q``).

    Args:
        lam2: ridge ``λ2`` (> 0). tau: hinge smoothing ``τ ≥ 0``.
        tol: target relative duality gap. max_iter: iteration cap (tasks not converged by then
            report their gap and ``converged=False``).
        method: ``"vmfista"`` (default), ``"fista"`` (scalar metric ``‖X‖²/λ2 + τ``) or
            ``"pgd"`` (plain projected gradient; kept for comparison).
        rank: number of Gram eigen-directions in the metric (``vmfista`` only), capped at
            ``64 // n_way`` so that the prox's ``r·K`` system stays small.
        check_every: an iteration whose extrapolated point is feasible is certified for free;
            otherwise a certificate (one extra pass over ``X``) is computed every
            ``check_every`` iterations.
        working_set, ws_threshold, ws_max, ws_round: iterate on the features with
            ``‖M_j‖ > ws_threshold·λ1`` at the start when they are at most a fraction ``ws_max``
            of all (sparse solutions, large λ1/λ_max), in rounds of ``ws_round``, then twice
            as many, ... iterations; see :meth:`run`. 0.95 and 5 (rather than 0.9 and 10):
            15-shot at λ1/λ_max = 0.5, 5-way, 8 episodes, iterations 20.2 → 19.2 (p = 2560) and
            17.4 → 16.1 (p = 16000); 5-shot 14.2 → 11.2 and 14.5 → 11.2.
        polish_after, polish_steps: episodes still uncertified after ``polish_after``
            iterations (0: never) are badly conditioned; when ``n·K ≤ 512`` they get up to
            ``polish_steps`` active-set Newton steps per stage of a ``λ2`` continuation
            (:func:`_polish`; they count against ``max_iter``), then FISTA resumes from there.
            Features scaled by 1e2-1e6 (κ up to ~1e16) are certified in 120-300 iterations
            instead of not in 3000. The benchmark's episodes (≤ 20 iterations) never reach it.
        adaptive: in the working-set rounds (sparse solutions), take each step in the metric
            ``s·Q`` with a per-task scale ``s ∈ [1/16, 1]`` set from the curvature the last step
            met (:func:`_adapt_scale`; a step that breaks the majorisation is rejected). ``Q``
            bounds the curvature of every feature of the working set, but features near the
            threshold barely bend the group norm: such steps meet 5-30% of it. 8 episodes,
            5-way, λ1/λ_max = 0.5, mean iterations: 1-shot p = 2560 7.25 → 5.4, 5-shot 10.9 →
            7.75, 15-shot 19 → 10.75 (p = 2560) and 16 → 9.6 (p = 16000).
        ridge_start: dense solutions (no working set) from a cold start first take this many
            FISTA steps on the ``λ1 = 0`` dual, in the Gram matrix (no pass over ``X``), and
            start from the best point of the segment towards them (:func:`_ridge_start`;
            0: off), where ``X`` has at least 2.5M entries (below, its small ops cost more
            than it saves). 15-shot, p = 16000: iterations 7 → 4.1 (λ1/λ_max = 0.01) and
            10.5 → 8.4 (0.1).
    """

    lam2: float = DEFAULT_LAM2
    tau: float = DEFAULT_TAU
    tol: float = 1e-5
    max_iter: int = 5000
    method: str = "vmfista"
    rank: int = 8
    check_every: int = 3
    working_set: bool = True
    ws_threshold: float = 0.95
    ws_max: float = 0.7
    ws_round: int = 5
    polish_after: int = 100
    polish_steps: int = 50
    adaptive: bool = True
    ridge_start: int = 3

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
        if int(self.rank) != self.rank or self.rank < 0:
            raise ValueError(f"rank must be a non-negative integer, got {self.rank!r}")
        if int(self.check_every) != self.check_every or self.check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {self.check_every!r}")
        if int(self.ws_round) != self.ws_round or self.ws_round < 1:
            raise ValueError(f"ws_round must be a positive integer, got {self.ws_round!r}")
        if int(self.polish_after) != self.polish_after or self.polish_after < 0:
            raise ValueError(
                f"polish_after must be a non-negative integer (0: never), got {self.polish_after!r}"
            )
        if int(self.polish_steps) != self.polish_steps or self.polish_steps < 1:
            raise ValueError(f"polish_steps must be a positive integer, got {self.polish_steps!r}")
        if int(self.ridge_start) != self.ridge_start or self.ridge_start < 0:
            raise ValueError(
                f"ridge_start must be a non-negative integer (0: off), got {self.ridge_start!r}"
            )

    @torch.no_grad()
    def run(
        self,
        X: Tensor,
        Y: Tensor,
        lam1: Tensor,
        init: Tensor | None = None,
        Mt0: Tensor | None = None,
    ) -> SolverOutput:
        """Solve (detached); see :class:`SolverOutput` for what comes back.

        With ``working_set``, when at most ``ws_max`` of the features pass
        ``‖M_j‖ > ws_threshold·λ1`` at the start, the iterations run on those features only
        (their Gram matrix has a smaller bulk, so the metric is tighter and each pass cheaper),
        in rounds of ``ws_round``, twice that, four times, ... iterations; after each round the
        result is checked on all features (``‖M_j‖ ≤ λ1`` outside the set makes the restricted
        certificate the full one) and violators are added, so a wrong set costs a round, not
        the whole budget. ``Mt0`` (optional) is ``(Y − α)ᵀX`` at the starting point, when the
        caller has it (one pass over ``X`` saved).
        """
        T, n, p = X.shape
        Y64 = Y.double()
        alpha = _alpha_at_zero(Y64, self.tau) if init is None else project_simplex(init.double())
        rows = _Rows(X)
        if not self.working_set or self.method == "pgd":
            return self._dense(rows, Y64, lam1, alpha, Mt0, init is None)
        from metasparse.solvers.implicit import _padded_index

        lam = lam1.to(X.dtype).unsqueeze(-1)
        if Mt0 is None:
            Mt0 = rows.left((Y64 - alpha).to(X.dtype).transpose(1, 2))
        ws = column_norms(Mt0) > self.ws_threshold * lam
        if int(ws.sum(1).max()) > self.ws_max * p:
            return self._dense(rows, Y64, lam1, alpha, Mt0, init is None)
        gap = torch.full((T,), float("inf"), dtype=torch.float64, device=X.device)
        P, Dv = torch.zeros_like(gap), torch.zeros_like(gap)
        iters = torch.zeros(T, dtype=torch.long, device=X.device)
        Mt = Mt0.clone()
        gram = torch.zeros(T, n, n, dtype=torch.float64, device=X.device)
        gram_mask = torch.zeros_like(ws)
        todo = torch.arange(T, device=X.device)
        has_viol = torch.zeros(T, dtype=torch.bool, device=X.device)
        scale = torch.zeros(T, 2, dtype=torch.float64, device=X.device)  # (s, floor)
        scale[:, 0] = 1.0
        rounds = self.ws_round  # iterations per round, doubled each round
        while True:  # every round runs at least one iteration: ends within max_iter
            left = self.max_iter - int(iters[todo].max())
            if left <= 0:
                break
            sub = rows if todo.numel() == T else rows.subset(todo)
            idx, valid = _padded_index(ws[todo])
            Xw = sub.gather_features(idx, valid)
            # the Newton polish goes by each task's total count, and may use the whole budget
            at = max(1, self.polish_after - int(iters[todo].max())) if self.polish_after else 0
            out = self._run(
                _Rows(Xw), Y64[todo], lam1[todo], alpha[todo], min(rounds, left),
                polish_at=at, polish_budget=left - at, scale=scale[todo] if self.adaptive else None,
            )  # fmt: skip
            if out.scale is not None:
                scale[todo] = out.scale
            alpha[todo], gap[todo], P[todo], Dv[todo] = out[0], out[1], out[3], out[4]
            iters[todo] += out.iterations
            gram[todo], gram_mask[todo] = out.gram, ws[todo]
            Mfull = sub.left((Y64[todo] - out.alpha).to(X.dtype).transpose(1, 2))
            Mt[todo] = Mfull
            nrm = column_norms(Mfull)
            viol = (nrm > lam[todo]) & ~ws[todo]
            bad = viol.any(1)
            has_viol[todo] = bad
            # no violator: the restricted certificate is the full problem's
            settled = (~bad) & (out.gap <= self.tol)
            grow = viol | ((nrm > self.ws_threshold * lam[todo]) & bad.unsqueeze(-1))
            ws[todo] |= grow
            todo = todo[~settled]
            if not todo.numel():
                return SolverOutput(alpha, gap, iters, P, Dv, Mt, gram, gram_mask)
            rounds *= 2
        # out of budget. Without violators the restricted certificate is the full one; the
        # other tasks are certified on all features at their last point (M is at hand: one pass)
        cert = todo[has_viol[todo]]
        if cert.numel():
            nrm, S = _scores(rows.subset(cert), Mt[cert], lam1[cert].double(), self.lam2)
            out = _certificate(S, nrm, alpha[cert], Y64[cert], lam1[cert], self.lam2, self.tau)
            P[cert], Dv[cert], gap[cert] = out
        return SolverOutput(alpha, gap, iters, P, Dv, Mt, gram, gram_mask)

    def _dense(
        self, rows: _Rows, Y: Tensor, lam1: Tensor, alpha: Tensor, Mt: Tensor | None, cold: bool
    ) -> SolverOutput:
        """The iterations on all features; a cold start first moves towards the ridge
        solution (:func:`_ridge_start`), whose metric the iterations then keep."""
        big = rows.X.numel() >= _RIDGE_MIN_SIZE  # (all tasks' rows: called from run)
        if not (cold and big and self.ridge_start and self.method != "pgd"):
            return self._run(rows, Y, lam1, alpha, self.max_iter, Mt)
        if Mt is None:
            Mt = rows.left((Y - alpha).to(rows.X.dtype).transpose(1, 2))
        metric = self._metric(rows, Y.shape[2])
        alpha, Mt = _ridge_start(
            rows, Y, lam1, alpha, Mt, metric, self.lam2, self.tau, self.ridge_start
        )
        return self._run(rows, Y, lam1, alpha, self.max_iter, Mt, metric=metric)

    def _metric(self, rows: _Rows, n_way: int) -> _Metric:
        """The FISTA metric for these rows (scalar for ``"fista"``: rank 0)."""
        rank = self.rank if self.method == "vmfista" else 0
        return _Metric.from_gram(rows.gram(), self.lam2, self.tau, rank, n_way)

    def _need_check(self, feas: Tensor, since: Tensor, last: bool) -> Tensor:
        """Tasks whose extrapolated point is infeasible and that get a certificate at ``α``
        anyway: every ``check_every`` iterations, and at the last."""
        if last:
            return ~feas
        return (~feas) & (since + 1 >= self.check_every)

    def _run(
        self,
        rows: _Rows,
        Y: Tensor,
        lam1: Tensor,
        alpha: Tensor,
        max_iter: int,
        Mt: Tensor | None = None,
        polish_at: int | None = None,
        polish_budget: int | None = None,
        scale: Tensor | None = None,
        metric: _Metric | None = None,
    ) -> SolverOutput:
        """The iterations on a fixed feature set, from the feasible float64 ``alpha``
        (``metric``: these rows' metric, when the caller has built it).

        ``X`` passes run in its dtype; the small dual-space arithmetic (``α``, the metric, the
        certificate) runs in float64. Certified tasks leave the batch, so one hard episode
        does not make the whole batch pay.
        """
        T, _, K = Y.shape
        lam2, tau = float(self.lam2), float(self.tau)
        dt = rows.X.dtype
        dev = rows.X.device
        lam1 = lam1.double()
        polish_at = self.polish_after if polish_at is None else polish_at
        polish = polish_at > 0 and self.method != "pgd" and Y.shape[1] * K <= _POLISH_SIZE
        metric = self._metric(rows, K) if metric is None else metric
        gram = metric.gram
        if self.method == "pgd":
            metric = _Metric(metric.top, metric.V, metric.lam, metric.top, metric.VV)
        # best certified point per task, with its (Y − α)ᵀX
        sol = alpha.clone()
        gap = torch.full((T,), float("inf"), dtype=torch.float64, device=dev)
        P = torch.zeros(T, dtype=torch.float64, device=dev)
        Dv = torch.zeros_like(P)
        iters = torch.zeros(T, dtype=torch.long, device=dev)

        live = torch.arange(T, device=dev)  # task ids of the batch rows
        rb, Yb, lb, mb = rows, Y, lam1, metric
        a = alpha
        if Mt is None:
            Mt = rb.left((Yb - a).to(dt).transpose(1, 2))  # (B, K, p): fast for both passes
        # where each task's best point's M lives: (tensor, row), gathered once at the end
        sol_Mt: list[tuple[Tensor, int]] = [(Mt, i) for i in range(T)]
        prev, Mt_prev = a, Mt
        t = torch.ones(T, 1, 1, dtype=torch.float64, device=dev)
        Wm = torch.zeros(T, mb.V.shape[-1], K, dtype=torch.float64, device=dev)
        since = torch.zeros(T, dtype=torch.long, device=dev)
        adaptive = scale is not None and self.method == "vmfista"
        scale_out = scale  # (T, 2): each task's metric scale s and its floor, as they end
        if adaptive:
            scale_out, scale = scale.clone(), scale.clone()
        pgd = self.method == "pgd"
        # the next step's extrapolated point, its (nrm, S) and, when its certificate will fall
        # back to α, α's (nrm, S): from the fused pass of the step before (see below)
        ahead = None
        k = 0
        while True:
            if ahead is None:
                t_next, mom = _momentum(t, pgd)
                y = a + mom * (a - prev)
                My = torch.lerp(Mt_prev, Mt, (1.0 + mom).to(dt))  # M is linear in α: no pass
                nrm, S = _scores(rb, My, lb, lam2)
                at_a = None
            else:
                t_next, mom, y, My, nrm, S, at_a = ahead
                ahead = None
            # certificate: free at y when y is feasible; otherwise every check_every iterations
            feas = (y >= 0).all(-1).all(-1)
            need = self._need_check(feas, since, k >= max_iter)
            cand_gap = torch.full_like(lb, float("inf"))
            cand_P, cand_D, cand = torch.zeros_like(lb), torch.zeros_like(lb), y
            D_y = None  # D at y, when the certificate computes it (for the adaptive scale)
            if bool(feas.any()):
                Pc, Dc, gc = _certificate(S, nrm, y, Yb, lb, lam2, tau)
                cand_gap = torch.where(feas, gc, cand_gap)
                cand_P, cand_D, D_y = Pc, Dc, -Dc
            if bool(need.any()):
                nrm_a, S_a = _scores(rb, Mt, lb, lam2) if at_a is None else at_a
                Pa, Da, ga = _certificate(S_a, nrm_a, a, Yb, lb, lam2, tau)
                nd = need.reshape(-1, 1, 1)
                cand = torch.where(nd, a, y)
                cand_gap = torch.where(need, ga, cand_gap)
                cand_P = torch.where(need, Pa, cand_P)
                cand_D = torch.where(need, Da, cand_D)
            checked = feas | need
            since = torch.where(checked, torch.zeros_like(since), since + 1)
            better = checked & (cand_gap < gap[live])
            if bool(better.any()):
                ids = live[better]
                sol[ids], gap[ids] = cand[better], cand_gap[better]
                P[ids], Dv[ids] = cand_P[better], cand_D[better]
                rows_b = better.nonzero().flatten()
                for row, tid, nd in zip(
                    rows_b.tolist(), live[rows_b].tolist(), need[rows_b].tolist(), strict=True
                ):
                    sol_Mt[tid] = (Mt if nd else My, row)
            done = gap[live] <= self.tol
            if k >= max_iter or bool(done.all()):
                break
            n_done = int(done.sum())
            if n_done and 2 * n_done >= live.numel():  # compact: certified tasks leave
                keep = ~done
                live, rb, mb = live[keep], rb.subset(keep), mb.index(keep)
                Yb, lb = Yb[keep], lb[keep]
                a, prev, y, t, t_next, Wm, since, nrm = (
                    v[keep] for v in (a, prev, y, t, t_next, Wm, since, nrm)
                )
                scale = scale[keep] if adaptive else scale
                D_y = None if D_y is None else D_y[keep]
                Mt, Mt_prev, S, done = Mt[keep], Mt_prev[keep], S[keep], done[keep]
            if k == polish_at and polish:
                # still uncertified after polish_after iterations: badly conditioned. Newton
                # steps (with λ2 continuation) from here, then FISTA restarts from their point
                pend = (~done).nonzero().flatten()
                spread = mb.top.reshape(-1)[pend] - tau  # ‖X‖²/λ2
                a_p, Mt_p, used = _polish(
                    self, rb.subset(pend), Yb[pend], lb[pend], a[pend], Mt[pend], spread,
                    max_iter - k if polish_budget is None else polish_budget,
                )  # fmt: skip
                a, Mt = a.index_put((pend,), a_p), Mt.index_put((pend,), Mt_p)
                prev, Mt_prev, t = a, Mt, torch.ones_like(t)
                iters[live[pend]] += used
                k += max(1, int(used.max()))  # Newton steps count against max_iter
                continue
            grad = _gradient_from_scores(S, y, Yb, tau)
            new, Wm = mb.prox(y, grad, Wm, scale[:, :1, None] if adaptive else None)
            Yn = (Yb - new).to(dt).transpose(1, 2)
            # where the two passes fuse, M at new comes with the next step's scores (below);
            # the adaptive step's curvature needs M at new first
            fuse = not adaptive and rb.fuses()
            if not fuse:
                Mt_new = rb.left(Yn)
            if adaptive:
                d = new - y
                Qd = mb.apply(d)
                new, Mt_new, scale, rejected = _adapt_scale(
                    scale, d, Qd, new, Mt_new, a, Mt, grad, nrm, D_y, Yb, lb, lam2, tau
                )
                scale_out[live] = scale
                t_next = _restart(t_next, Qd, a, new, rejected)  # a rejected step restarts too
            elif not pgd:
                t_next = _restart(t_next, mb.apply(new - y), a, new)
            if fuse:
                # the next step's extrapolated point is known before M at new: one fused pass
                # gives M at new and the scores at that point (and at new, for a certificate)
                t_nn, mom_n = _momentum(t_next, pgd)
                y_n = new + mom_n * (new - a)
                need_n = self._need_check((y_n >= 0).all(-1).all(-1), since, k + 1 >= max_iter)
                Mt_new, My_n, nrm_n, S_n, at_new = _step_pass(
                    rb, Yn, Mt, (1.0 + mom_n).to(dt), lb, lam2, bool(need_n.any())
                )
                ahead = (t_nn, mom_n, y_n, My_n, nrm_n, S_n, at_new)
            prev, Mt_prev, a, Mt, t = a, Mt, new, Mt_new, t_next
            iters[live[~done]] += 1  # certified tasks waiting for compaction do not count
            k += 1
        Mt_sol = torch.stack([src[row] for src, row in sol_Mt])
        return SolverOutput(sol, gap, iters, P, Dv, Mt_sol, gram, None, scale_out)


def _ridge_start(
    rows: _Rows,
    Y: Tensor,
    lam1: Tensor,
    alpha: Tensor,
    Mt: Tensor,
    metric: _Metric,
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
        t_next, mom = _momentum(t, False)
        y = a + mom * (a - prev)
        grad = _gradient_from_scores(G @ (Y - y) / lam2, y, Y, tau)
        new, Z = metric.prox(y, grad, Z)
        prev, a, t = a, new, _restart(t_next, metric.apply(new - y), a, new)
    Mr = rows.left((Y - a).to(Mt.dtype).transpose(1, 2))
    dM = Mr - Mt
    # along the segment ‖M_j(s)‖² = A + 2Bs + Cs², and the rest of D (_dual_objective) is a
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
    grid = torch.linspace(0.0, 1.0, _RIDGE_GRID, dtype=torch.float64, device=alpha.device)
    lam = lam1.to(A.dtype).unsqueeze(-1)
    D = []
    for s in grid.tolist():  # in X's dtype: only the grid's argmin is used
        ex = torch.add(A, torch.add(B2, C, alpha=s), alpha=s).clamp_min_(0.0).sqrt_()
        ex = ex.sub_(lam).clamp_min_(0.0)
        D.append((ex * ex).sum(-1, dtype=torch.float64) / (2.0 * lam2))
    powers = torch.stack([torch.ones_like(grid), grid, grid * grid], -1)  # (G, 3)
    s = grid[(torch.stack(D) + powers @ quad).argmin(0)].reshape(-1, 1, 1)
    return alpha + s * d, torch.lerp(Mt, Mr, s.to(Mt.dtype))


def _restart(
    t_next: Tensor, Qd: Tensor, a: Tensor, new: Tensor, also: Tensor | None = None
) -> Tensor:
    """FISTA's next ``t`` after the gradient restart (O'Donoghue & Candès, in the metric): 1
    for the tasks whose step ``y → new`` from ``a`` points uphill, ``⟨Q(new − y), a − new⟩ > 0``
    (``Qd = Q(new − y)``), and for those in ``also``."""
    up = (Qd * (a - new)).sum((1, 2)) > 0
    if also is not None:
        up = up | also
    return torch.where(up.reshape(-1, 1, 1), torch.ones_like(t_next), t_next)


def _momentum(t: Tensor, pgd: bool) -> tuple[Tensor, Tensor]:
    """FISTA's next ``t`` and the extrapolation weight ``(t − 1)/t_next`` (none for PGD)."""
    if pgd:
        return t, torch.zeros_like(t)
    t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
    return t_next, (t - 1.0) / t_next


def _step_pass(
    rows: _Rows, Yn: Tensor, Mt: Tensor, w: Tensor, lam1: Tensor, lam2: float, at_new: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """One fused pass over ``X`` (:func:`.products.left_then_right`): ``M`` at the new point,
    ``Mt_new = Yn X`` with ``Yn = (Y − α_new)ᵀ``, then the next extrapolated point's
    ``My = lerp(Mt, Mt_new, w)`` with its feature norms and scores (as :func:`_scores`); with
    ``at_new``, the scores at the new point too (its certificate). Returns
    ``(Mt_new, My, nrm, S, (nrm_new, S_new) or None)``.
    """
    B, K, _ = Yn.shape
    p = rows.X.shape[2]
    Mt_new = Mt.new_empty(B, K, p)
    My = torch.empty_like(Mt_new)
    nrm = Mt.new_empty(2 if at_new else 1, B, p)
    lam = lam1.to(Mt.dtype).unsqueeze(-1)

    def weights(Mc: Tensor, c: slice) -> Tensor:  # per chunk (32 at 15-shot, p = 16000)
        W = _shrunk(torch.lerp(Mt[:, :, c], Mc, w, out=My[:, :, c]), lam, nrm[0, :, c])
        return torch.cat([W, _shrunk(Mc, lam, nrm[1, :, c])], 1) if at_new else W

    S = rows.left_then_right(Yn, weights, left=Mt_new).double() / lam2
    nrm = nrm.double()
    return Mt_new, My, nrm[0], S[..., :K], (nrm[1], S[..., K:]) if at_new else None


def _adapt_scale(
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
    D_new = _dual_objective(nrm_new, new, Y, lam1, lam2, tau)
    if D_y is None:
        D_y = _dual_objective(nrm_y, new - d, Y, lam1, lam2, tau)
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
    s_next = torch.where(reliable, torch.maximum(2.0 * rho, floor).clamp(_SCALE_MIN, 1.0), s)
    if bool(rejected.any()):
        m3 = rejected.reshape(-1, 1, 1)
        new, Mt_new = torch.where(m3, a, new), torch.where(m3, Mt, Mt_new)
    return new, Mt_new, torch.stack([s_next, floor.clamp_max(1.0)], -1), rejected


def _scores(rows: _Rows, Mt: Tensor, lam1: Tensor, lam2: float) -> tuple[Tensor, Tensor]:
    """Feature norms ``‖M_j‖`` (float64) and scores ``X Wᵀ`` (float64) for ``Mt`` (T, K, p)."""
    nrm = Mt.new_empty(Mt.shape[0], Mt.shape[2])
    S = rows.right(_shrunk(Mt, lam1.to(Mt.dtype).unsqueeze(-1), nrm))
    return nrm.double(), S.double() / lam2


def _dual_hessian(
    rows: _Rows,
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
    from metasparse.solvers.implicit import _padded_index

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
    idx, valid = _padded_index(nrm > lam)
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
    from metasparse.solvers.implicit import _spd_solve

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
        u = _spd_solve(Pm @ H @ Pm + (eye - Pm), rhs.squeeze(-1))
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
    rows: _Rows,
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
        nrm, S = _scores(rows, Mt, lam1, lam2)
        _, neg_D0, gap = _certificate(S, nrm, alpha, Y, lam1, lam2, tau)
        todo &= gap > tol
        if not bool(todo.any()):
            break
        g = _gradient_from_scores(S, alpha, Y, tau)
        delta = _newton_direction(alpha, g, _dual_hessian(rows, Mt, nrm, lam1, lam2, tau))
        M64 = Mt.double()
        dM = rows.left(delta.to(dt).transpose(1, 2)).double()  # M(α + tδ) = M − t·dM
        t = _ray_minimiser(alpha, delta, Y, M64, dM, lam1, lam2, tau, todo).reshape(T, 1, 1)
        ray = project_simplex(alpha + t * delta)  # feasible up to round-off
        M_ray = (M64 - t * dM).to(dt)
        D0 = -neg_D0  # the certificate's dual value at α
        D_ray = _dual_objective(column_norms(M_ray).double(), ray, Y, lam1, lam2, tau)
        # the projected arc (several coordinates reach 0 at once), at t = 1, 1/2, 1/4, 1/8
        best, M_best, D_best = ray, M_ray, D_ray
        for s_arc in (1.0, 0.5, 0.25, 0.125):
            arc = project_simplex(alpha + s_arc * delta)
            M_arc = rows.left((Y - arc).to(dt).transpose(1, 2))
            D_arc = _dual_objective(column_norms(M_arc).double(), arc, Y, lam1, lam2, tau)
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


def _polish(
    solver: GroupSparseSVMSolver,
    rows: _Rows,
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
    kept for every later stage.
    """
    tau, tol, steps = float(solver.tau), float(solver.tol), int(solver.polish_steps)
    stages = [float(solver.lam2)]
    k = float(spread.max()) if spread.numel() else 0.0
    while k > _POLISH_SPREAD:
        stages.append(stages[-1] * 100.0)
        k /= 100.0
    stages.reverse()
    used = torch.zeros(Y.shape[0], dtype=torch.long, device=Y.device)
    if len(stages) > 1 and budget > 3 * len(stages):
        first = replace(solver, lam2=stages[0], polish_after=0, working_set=False)
        cap = min(_POLISH_FISTA, budget - 3 * len(stages))
        out = first._run(rows, Y, lam1, alpha, cap, Mt)
        alpha, Mt, used = out.alpha, out.Mt, used + out.iterations
    for i, l2 in enumerate(stages):
        left = budget - int(used.max()) - 3 * (len(stages) - 1 - i)
        if left <= 0:
            continue
        alpha, Mt, u = _newton_polish(rows, Y, lam1, alpha, Mt, l2, tau, tol, min(steps, left))
        used += u
    return alpha, Mt, used


def _resolve_lam1(
    support: Tensor,
    support_labels: Tensor,
    n_way: int,
    tau: float,
    lam_ratio: float | None,
    lam1: float | Tensor | None,
    lam_max: Tensor | None = None,
) -> Tensor:
    """Per-task absolute ``λ1`` from exactly one of ``lam_ratio`` (× λ_max) or ``lam1``."""
    T = support.shape[0]
    if (lam_ratio is None) == (lam1 is None):
        raise ValueError(
            "give exactly one of lam_ratio (λ1/λ_max per episode, in [0, 1]) or lam1 (absolute)"
        )
    if lam_ratio is not None:
        if not 0.0 <= float(lam_ratio) <= 1.0:
            raise ValueError(
                f"lam_ratio is λ1/λ_max and must lie in [0, 1] (1 already gives W = 0), got "
                f"{lam_ratio!r}; pass lam1= for an absolute λ1"
            )
        if lam_max is None:  # inputs already checked
            lam_max = _lambda_max(support, _onehot(support_labels, n_way, support.dtype), tau)
        return float(lam_ratio) * lam_max
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
    method: str = "vmfista",
    rank: int = 8,
    working_set: bool = True,
    adaptive: bool = True,
    ridge_start: int = 3,
    init: Tensor | None = None,
    backward: str = "auto",
    lam1_grad: str = "fixed",
) -> GroupSparseSVMResult:
    """Solve the group-sparse SVM for a batch of episodes; differentiable w.r.t. ``support``.

    Args:
        support: (tasks, n, p) features. support_labels: (tasks, n) in ``[0, n_way)``.
        lam_ratio: ``λ1/λ_max`` per episode (exactly one of ``lam_ratio``/``lam1``).
        lam1: absolute ``λ1`` (float or (tasks,)).
        lam2, tau: ridge and hinge smoothing. tol: target relative duality gap.
        max_iter, method, rank, working_set, adaptive, ridge_start: see
            :class:`GroupSparseSVMSolver`.
        init: warm start for the dual (tasks, n, n_way), projected onto the simplices.
        backward: how the implicit system on active faces × active features is solved:
            ``"auto"``, ``"dense"``, ``"cg"`` (see ``implicit.svm_dual_root``) or ``"generic"``
            (dense Jacobian of the projected-gradient fixed point; for checks).
        lam1_grad: with ``lam_ratio``, ``"fixed"`` treats ``λ1`` as a constant in the gradient;
            ``"lam_max"`` differentiates ``λ1 = lam_ratio · λ_max(support)`` exactly (through
            the maximising feature's norm), so the gradient is that of the returned weights
            as a function of ``support``. Ignored with an absolute ``lam1``.

    Returns:
        :class:`GroupSparseSVMResult`.
    """
    from metasparse.solvers.implicit import (  # the autograd boundary
        _use_cg_backward,
        svm_dual_root,
        svm_weights,
    )

    _check_inputs(support, support_labels, n_way, tau)
    Y = _onehot(support_labels, n_way, support.dtype)
    X = support.detach()
    Mt0 = _m_at_zero(X, Y, tau) if init is None else None  # shared: λ_max and the first step
    lam_max = None if Mt0 is None else column_norms(Mt0).amax(-1)
    if lam1_grad not in ("fixed", "lam_max"):
        raise ValueError(f"lam1_grad must be 'fixed' or 'lam_max', got {lam1_grad!r}")
    lam1_t = _resolve_lam1(support, support_labels, n_way, tau, lam_ratio, lam1, lam_max)
    lam1_att = lam1_t
    if lam1_grad == "lam_max" and lam_ratio and support.requires_grad:
        lam1_att = lam1_t + float(lam_ratio) * _lambda_max_graph(support, Y, tau)
    solver = GroupSparseSVMSolver(
        lam2=lam2,
        tau=tau,
        tol=tol,
        max_iter=max_iter,
        method=method,
        rank=rank,
        working_set=working_set,
        adaptive=adaptive,
        ridge_start=ridge_start,
    )
    out = solver.run(X, Y, lam1_t, init=init, Mt0=Mt0)
    iters = out.iterations
    alpha, gap, P, Dv = (v.to(support.dtype) for v in out[:2] + out[3:5])
    if backward == "generic":
        alpha_att = svm_dual_root(alpha, support, Y, lam1_att, lam2, tau, method="generic")
    else:
        alpha_att = svm_dual_root(alpha, support, Y, lam1_att, lam2, tau, solve=backward)
    n, K, p = Y.shape[1], Y.shape[2], support.shape[2]
    if backward != "generic" and _use_cg_backward(backward, tau, n, K, p):
        # fused backward; the solver's M and Gram save it three passes over X
        weights = svm_weights(
            alpha, support, Y, lam1_att, lam2, tau, Mt=out.Mt, gram=(out.gram, out.gram_mask)
        )
    else:
        Mt = (Y - alpha_att).transpose(1, 2) @ support  # (T, K, p): the fast layout
        weights = weights_from_m(Mt, lam1_att, lam2)
    with torch.no_grad():
        used = (weights != 0).any(1).to(support.dtype).mean(-1)
    converged = gap <= tol
    if not bool(converged.all()):
        warnings.warn(
            "group-sparse SVM: some episodes were not certified to the requested duality gap "
            "within max_iter (their reached gap is in result.gap, result.converged is False). "
            "Badly scaled features (e.g. norms ~1e6) make the dual ill-conditioned: normalise "
            "the features, raise lam2 or tau, or raise max_iter (float32 features cannot "
            "certify a badly conditioned episode: use float64 there).",
            RuntimeWarning,
            stacklevel=2,
        )
    return GroupSparseSVMResult(
        weights=weights,
        dual=alpha_att,
        lam1=lam1_t,
        gap=gap,
        iterations=iters,
        primal=P,
        dual_value=Dv,
        converged=converged,
        features_used=used,
    )
