"""Crammer–Singer SVM head solved by qpth, formulated exactly as MetaOptNet's SVM-CS head.

MetaOptNet (Lee et al., CVPR 2019, ``models/classification_heads.py``,
``MetaOptNetHead_SVM_CS``) solves, per task, the QP on ``α ∈ R^{n×K}`` (flattened row-major)

    min_α ½ vec(α)ᵀ (K ⊗ I_K + I) vec(α) − ⟨Y, α⟩   s.t.  α ≤ C·Y,  Σ_k α_ik = 0,

with ``K = X Xᵀ`` the support Gram matrix and the "+I" added "to help avoid PSD errors", and
scores a query ``q`` as ``Σ_i α_ik ⟨x_i, q⟩``, i.e. ``W = Xᵀ α``. Substituting
``α = C (Y − β)`` shows this is the dual of ``docs/method.md`` with ``λ1 = 0``, ``λ2 = 1/C`` and
hinge smoothing ``τ = jitter·C`` (``β_i`` on the simplex), which gives a duality-gap
certificate for the classifier actually used, reported in the statistics.

Iterations: MetaOptNet's head defaults to ``maxIter=15``; its ``train.py`` calls the head
without overriding it (15 at meta-training) and its ``test.py`` passes ``maxIter=3``
(3 at meta-test), as also listed in kjunelee/MetaOptNet issue #22. qpth's own default is 20.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from qpth.qp import QPFunction
from torch import Tensor

from metasparse.heads.base import Head, HeadStats
from metasparse.solvers.svm.problem import project_simplex as project_rows_to_simplex


def crammer_singer_qp(
    support: Tensor, onehot: Tensor, C_reg: float, jitter: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """qpth inputs ``(Q, p, G, h, A, b)`` of MetaOptNet's SVM-CS dual for a batch of tasks.

    Only ``Q`` depends on the features (and carries their gradient); the constraint data are
    built without gradient, as MetaOptNet detaches them.
    """
    tasks, n, k = onehot.shape
    dtype, device = support.dtype, support.device
    gram = support.bmm(support.transpose(1, 2))
    eye_k = torch.eye(k, dtype=dtype, device=device)
    block = (gram[:, :, None, :, None] * eye_k[None, None, :, None, :]).reshape(tasks, n * k, -1)
    Q = block + jitter * torch.eye(n * k, dtype=dtype, device=device)
    p = -onehot.reshape(tasks, n * k)
    G = torch.eye(n * k, dtype=dtype, device=device).expand(tasks, n * k, n * k)
    h = C_reg * onehot.reshape(tasks, n * k)
    eye_n = torch.eye(n, dtype=dtype, device=device)
    A = eye_n[:, :, None].expand(n, n, k).reshape(n, n * k).expand(tasks, n, n * k)
    b = torch.zeros(tasks, n, dtype=dtype, device=device)
    return Q, p, G, h, A, b


@torch.no_grad()
def crammer_singer_certificate(
    gram: Tensor, onehot: Tensor, alpha: Tensor, C_reg: float, jitter: float
) -> dict[str, Tensor]:
    """Per-task optimality diagnostics of a (possibly inexact) QP solution ``alpha``.

    ``rel_gap`` is ``(P(W) + D(β̃)) / |P(W)|`` for ``W = Xᵀα`` (the classifier used) and the
    feasible dual point ``β̃ = proj_Δ(Y − α/C)``: an upper bound on W's relative
    suboptimality in the smoothed-hinge primal of docs/method.md (τ = jitter·C, λ2 = 1/C).
    ``eq_resid`` and ``ineq_viol`` are the largest violations of the QP's constraints, over C;
    ``primal`` is P(W) and ``dual`` is −D(β̃), a lower bound on the optimal primal value.
    """
    gram, onehot, alpha = gram.double(), onehot.double(), alpha.double()
    tau, lam2 = jitter * C_reg, 1.0 / C_reg
    scores = gram.bmm(alpha)  # (tasks, n, K): W x_i for every support example
    w_sq = (alpha * scores).sum(dim=(1, 2))  # ‖W‖_F² = tr(αᵀ K α)
    v = scores + 1.0 - onehot
    a = project_rows_to_simplex(onehot + v / tau)
    loss = (a * v).sum(-1) - 0.5 * tau * ((a - onehot) ** 2).sum(-1) - (scores * onehot).sum(-1)
    primal = loss.sum(-1) + 0.5 * lam2 * w_sq
    beta = project_rows_to_simplex(onehot - alpha / C_reg)
    diff = onehot - beta
    m_sq = (diff * gram.bmm(diff)).sum(dim=(1, 2))  # ‖Xᵀ(Y − β̃)‖²
    dual = (
        m_sq / (2 * lam2)
        + 0.5 * tau * (diff**2).sum(dim=(1, 2))
        - (beta * (1.0 - onehot)).sum(dim=(1, 2))
    )
    return {
        "rel_gap": (primal + dual) / primal.abs().clamp_min(1e-12),
        "eq_resid": alpha.sum(-1).abs().amax(-1) / C_reg,
        "ineq_viol": (alpha - C_reg * onehot).clamp_min(0.0).amax(dim=(1, 2)) / C_reg,
        "primal": primal,
        "dual": -dual,
    }


class SVMCSHead(Head):
    """MetaOptNet's Crammer–Singer SVM head (qpth interior point, implicit gradients).

    Args:
        C_reg: SVM cost C (MetaOptNet: 0.1).
        max_iter: qpth iterations (MetaOptNet: 15 when meta-training, 3 at meta-test).
        double_precision: solve the QP in float64 even for float32 features (logits keep the
            input dtype); float64 features are always solved in float64.
        jitter: the "+I" ridge on the QP matrix (MetaOptNet: 1.0); must be > 0 for qpth.
        eps, not_improved_lim: qpth's stopping tolerance and patience (its defaults).
        learn_scale, init_scale: the learnable logit scale of :class:`Head`.
        log_scale: learn the logit scale in log space (relative steps, always positive).

    Statistics (averaged over tasks): ``support_acc``, ``qp_rel_gap`` (certified relative
    duality gap), ``qp_eq_resid``, ``qp_ineq_viol`` (see :func:`crammer_singer_certificate`)
    and ``qp_nonfinite`` (fraction of tasks whose solution has NaN/Inf). qpth's warnings are
    silenced; these numbers replace them. On CPU, qpth's batched LU breaks after
    ``torch.set_num_threads(n > 1)`` (a PyTorch bug): run single-threaded; the head then raises
    a ``RuntimeError`` that says so instead of qpth's pivot error.
    """

    def __init__(
        self,
        C_reg: float = 0.1,
        max_iter: int = 15,
        double_precision: bool = False,
        jitter: float = 1.0,
        eps: float = 1e-12,
        not_improved_lim: int = 3,
        learn_scale: bool = True,
        init_scale: float = 1.0,
        log_scale: bool = False,
    ) -> None:
        super().__init__(learn_scale=learn_scale, init_scale=init_scale, log_scale=log_scale)
        if not C_reg > 0:
            raise ValueError(f"C_reg must be positive, got {C_reg!r}")
        if int(max_iter) != max_iter or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        if not jitter > 0:
            raise ValueError(
                f"jitter must be positive (qpth needs a positive-definite QP matrix), "
                f"got {jitter!r}"
            )
        if int(not_improved_lim) != not_improved_lim or not_improved_lim < 1:
            raise ValueError(
                f"not_improved_lim must be a positive integer, got {not_improved_lim!r}"
            )
        self.C_reg = float(C_reg)
        self.max_iter = int(max_iter)
        self.double_precision = bool(double_precision)
        self.jitter = float(jitter)
        self.eps = float(eps)
        self.not_improved_lim = int(not_improved_lim)

    def solve_dual(self, support: Tensor, support_labels: Tensor, n_way: int) -> Tensor:
        """QP solution α (tasks, n_support, n_way) in the solver's dtype; differentiable."""
        solve_dtype = torch.float64 if self.double_precision else support.dtype
        try:
            return self._qp(support.to(solve_dtype), support_labels, n_way)
        except RuntimeError as exc:
            if "not spd" not in str(exc).lower():
                raise
            if solve_dtype == torch.float64:
                raise ValueError(
                    "SVM-CS: the QP matrix X Xᵀ ⊗ I + jitter·I is not positive definite even in "
                    "float64 (largest feature norm "
                    f"{float(support.detach().norm(dim=-1).max()):.3g}); normalise the features "
                    "or raise the head's jitter"
                ) from exc
        # float32 cannot hold jitter = 1 beside Gram entries ~1e7: solve this batch in float64
        warnings.warn(
            f"SVM-CS: the QP matrix is not positive definite in {solve_dtype} at this feature "
            f"scale (largest feature norm {float(support.detach().norm(dim=-1).max()):.3g}); "
            "solved in float64 instead. Normalise the features, or pass double_precision=True "
            "to always solve in float64",
            RuntimeWarning,
            stacklevel=3,
        )
        return self._qp(support.double(), support_labels, n_way)

    def _qp(self, x: Tensor, support_labels: Tensor, n_way: int) -> Tensor:
        """qpth's solution of the QP for features ``x`` in the dtype they come in."""
        onehot = F.one_hot(support_labels, n_way).to(x.dtype)
        Q, p, G, h, A, b = crammer_singer_qp(x, onehot, self.C_reg, self.jitter)
        solver = QPFunction(
            eps=self.eps, verbose=-1, notImprovedLim=self.not_improved_lim, maxIter=self.max_iter
        )
        try:
            alpha = solver(Q, p, G, h, A, b)
        except RuntimeError as exc:
            if "pivots" in str(exc).lower() and not x.is_cuda:
                raise RuntimeError(
                    "qpth's batched LU factorisation returned invalid pivots: a known PyTorch "
                    "CPU bug after torch.set_num_threads(n > 1) in this process; call "
                    "torch.set_num_threads(1) before using the SVM-CS head on CPU"
                ) from exc
            raise
        return alpha.reshape(onehot.shape)

    def fit_predict(
        self, query: Tensor, support: Tensor, support_labels: Tensor, n_way: int
    ) -> tuple[Tensor, HeadStats]:
        """Unscaled logits (tasks, n_query, n_way) and solver statistics."""
        alpha = self.solve_dual(support, support_labels, n_way)
        logits = query.bmm(support.transpose(1, 2)).bmm(alpha.to(query.dtype))
        with torch.no_grad():
            gram = support.bmm(support.transpose(1, 2))
            onehot = F.one_hot(support_labels, n_way).to(support.dtype)
            a = alpha.detach()
            finite = torch.isfinite(a).all(dim=(1, 2))
            cert = crammer_singer_certificate(
                gram, onehot, torch.nan_to_num(a), self.C_reg, self.jitter
            )
            support_pred = gram.bmm(a.to(gram.dtype)).argmax(-1)
            values = torch.stack(
                [
                    (support_pred == support_labels).double().mean(),
                    cert["rel_gap"].mean(),
                    cert["eq_resid"].mean(),
                    cert["ineq_viol"].mean(),
                    1.0 - finite.double().mean(),
                ]
            ).tolist()
        names = ("support_acc", "qp_rel_gap", "qp_eq_resid", "qp_ineq_viol", "qp_nonfinite")
        return logits, dict(zip(names, values, strict=True))
