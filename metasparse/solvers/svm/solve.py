"""The public entry point: :func:`solve_group_sparse_svm` (forward solve + implicit backward).

It checks the inputs, resolves ``λ1`` (absolute, or ``lam_ratio · λ_max``), runs
:class:`.fista.GroupSparseSVMSolver` on detached tensors and re-attaches the solution through
the implicit-differentiation boundary of :mod:`.backward` (never unrolling iterations).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from metasparse.solvers.svm.backward import svm_dual_root, svm_weights, use_cg_backward
from metasparse.solvers.svm.fista import GroupSparseSVMSolver, SolverOutput
from metasparse.solvers.svm.problem import (
    DEFAULT_LAM2,
    DEFAULT_TAU,
    certify_weights,
    check_inputs,
    column_norms,
    lambda_max_graph,
    lambda_max_unchecked,
    m_at_zero,
    onehot,
    weights_from_m,
)


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
            lam_max = lambda_max_unchecked(
                support, onehot(support_labels, n_way, support.dtype), tau
            )
        return float(lam_ratio) * lam_max
    value = torch.as_tensor(lam1, dtype=support.dtype, device=support.device).detach()
    if value.dim() == 0:
        value = value.expand(T).clone()
    if value.shape != (T,):
        raise ValueError(f"lam1 must be a float or have shape (tasks,) = ({T},)")
    if not torch.isfinite(value).all() or bool((value < 0).any()):
        raise ValueError("lam1 must be finite and >= 0")
    return value


def _certify_rounded(
    solver: GroupSparseSVMSolver, out: SolverOutput, X: Tensor, Y: Tensor, lam1: Tensor
) -> tuple[SolverOutput, tuple[Tensor, Tensor, Tensor]]:
    """Certify in float64 the float32 weights ``W = BST(out.Mt)/λ2`` as they are
    (:func:`certify_weights`), and solve again, to a tenth of the tolerance, the tasks that miss
    the tolerance there although the certificate of ``W(α)`` met it. Returns the (merged)
    output and ``P``, ``−D``, gap of its weights.

    Near the tolerance the rounding of ``M`` can tip a certified gap over it; a tighter solve
    settles those. On badly scaled features no tolerance survives float32's rounding: those
    tasks stay uncertified, which the caller reports."""

    def certify(o: SolverOutput, rows: Tensor | slice) -> tuple[Tensor, Tensor, Tensor]:
        W = weights_from_m(o.Mt, lam1[rows], solver.lam2)
        alpha = o.alpha.to(X.dtype)  # the dual point as the result returns it
        return certify_weights(X[rows], Y[rows], alpha, W, lam1[rows], solver.lam2, solver.tau)

    cert = certify(out, slice(None))
    idx = ((cert[2] > solver.tol) & (out.gap <= solver.tol)).nonzero().flatten()
    if idx.numel() == 0:
        return out, cert
    # as many iterations again as the loop took (at least 50): enough for a tenth of the gap
    # where rounding is not the limit, and a bounded cost where it is (no tolerance survives)
    budget = min(solver.max_iter, max(50, int(out.iterations[idx].max())))
    tight = dataclasses.replace(solver, tol=0.1 * solver.tol, max_iter=budget)
    sub = tight.run(X[idx], Y[idx], lam1[idx], init=out.alpha[idx])
    T, p = X.shape[0], X.shape[2]

    def mask(m: Tensor | None, rows: int) -> Tensor:
        return torch.ones(rows, p, dtype=torch.bool, device=X.device) if m is None else m

    merged = out._replace(
        alpha=out.alpha.index_put((idx,), sub.alpha),
        gap=out.gap.index_put((idx,), sub.gap),
        iterations=out.iterations.index_put((idx,), out.iterations[idx] + sub.iterations),
        primal=out.primal.index_put((idx,), sub.primal),
        dual_value=out.dual_value.index_put((idx,), sub.dual_value),
        Mt=out.Mt.index_put((idx,), sub.Mt),
        gram=out.gram.index_put((idx,), sub.gram),
        gram_mask=mask(out.gram_mask, T).index_put((idx,), mask(sub.gram_mask, idx.numel())),
    )
    redone = certify(sub, idx)
    return merged, tuple(c.index_put((idx,), r) for c, r in zip(cert, redone, strict=True))


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
    check_finite: bool = True,
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
            ``"auto"``, ``"dense"``, ``"cg"`` (see :func:`.backward.svm_dual_root`) or ``"generic"``
            (dense Jacobian of the projected-gradient fixed point; for checks).
        lam1_grad: with ``lam_ratio``, ``"fixed"`` treats ``λ1`` as a constant in the gradient;
            ``"lam_max"`` differentiates ``λ1 = lam_ratio · λ_max(support)`` exactly (through
            the maximising feature's norm), so the gradient is that of the returned weights
            as a function of ``support``. Ignored with an absolute ``lam1``.
        check_finite: scan ``support`` for NaN/Inf (``ValueError``); the heads pass False,
            as :func:`metasparse.heads.base.check_episode` has scanned it already.

    Returns:
        :class:`GroupSparseSVMResult`.
    """
    check_inputs(support, support_labels, n_way, tau, finite=check_finite)
    Y = onehot(support_labels, n_way, support.dtype)
    X = support.detach()
    Mt0 = m_at_zero(X, Y, tau) if init is None else None  # shared: λ_max and the first step
    lam_max = None if Mt0 is None else column_norms(Mt0).amax(-1)
    if lam1_grad not in ("fixed", "lam_max"):
        raise ValueError(f"lam1_grad must be 'fixed' or 'lam_max', got {lam1_grad!r}")
    lam1_t = _resolve_lam1(support, support_labels, n_way, tau, lam_ratio, lam1, lam_max)
    lam1_att = lam1_t
    if lam1_grad == "lam_max" and lam_ratio and support.requires_grad:
        lam1_att = lam1_t + float(lam_ratio) * lambda_max_graph(support, Y, tau)
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
    # the certificate is exact for W(α); float32 weights are W(α) rounded through a float32 M,
    # far from it on badly scaled features: they are certified as they are (P, −D, gap)
    rounded = None
    if X.dtype != torch.float64:
        out, rounded = _certify_rounded(solver, out, X, Y, lam1_t)
    iters = out.iterations
    alpha, gap, P, Dv = (v.to(support.dtype) for v in out[:2] + out[3:5])
    if backward == "generic":
        alpha_att = svm_dual_root(alpha, support, Y, lam1_att, lam2, tau, method="generic")
    else:
        alpha_att = svm_dual_root(alpha, support, Y, lam1_att, lam2, tau, solve=backward)
    n, K, p = Y.shape[1], Y.shape[2], support.shape[2]
    if backward != "generic" and use_cg_backward(backward, tau, n, K, p):
        # fused backward; the solver's M and Gram save it three passes over X. Its weights are
        # BST(out.Mt)/λ2 bitwise (λ1's graph adds an exact zero): ``rounded`` certified them
        weights = svm_weights(
            alpha, support, Y, lam1_att, lam2, tau, Mt=out.Mt, gram=(out.gram, out.gram_mask)
        )
    else:
        Mt = (Y - alpha_att).transpose(1, 2) @ support  # (T, K, p): the fast layout
        weights = weights_from_m(Mt, lam1_att, lam2)
        if rounded is not None:  # another M, rounded otherwise: certify these weights
            rounded = certify_weights(X, Y, alpha, weights.detach(), lam1_t, lam2, tau)
    with torch.no_grad():
        used = (weights != 0).any(1).to(support.dtype).mean(-1)
    if rounded is not None:
        P64, D64, gap64 = rounded
        gap, P, Dv = gap64.to(gap.dtype), P64.to(P.dtype), D64.to(Dv.dtype)
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
