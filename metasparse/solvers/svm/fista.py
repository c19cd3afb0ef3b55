"""The batched, certified dual solver of the group-sparse SVM (:class:`GroupSparseSVMSolver`).

It runs FISTA on the dual (:mod:`.problem`) for all tasks at once, in a fixed metric that
handles the few large eigenvalues of the Gram matrix ``X Xᵀ`` exactly (:class:`.metric.Metric`),
with gradient restarts, a working set of features when the solution is sparse, per-task stopping
on the relative duality gap ``(P − (−D))/max(1, |P|)`` (summed from per-example Fenchel–Young
gaps, so float32 features still certify 1e-5) and warm starts; episodes it does not certify in
``polish_after`` iterations get Newton steps (:mod:`.polish`). It runs on detached tensors:
:func:`.solve.solve_group_sparse_svm` re-attaches the solution through the implicit backward
(:mod:`.backward`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from metasparse.solvers import tuning
from metasparse.solvers.linalg import padded_index
from metasparse.solvers.rows import Rows
from metasparse.solvers.svm.metric import Metric
from metasparse.solvers.svm.polish import continuation_polish
from metasparse.solvers.svm.problem import (
    DEFAULT_LAM2,
    DEFAULT_TAU,
    alpha_at_zero,
    certificate,
    column_norms,
    gradient_from_scores,
    project_simplex,
    scores,
)
from metasparse.solvers.svm.steps import adapt_scale, momentum, restart, ridge_warm_start, step_pass

_METHODS = ("vmfista", "fista", "pgd")


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

    The default method, ``"vmfista"``, is FISTA in the fixed metric of :class:`Metric`: the
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
            as many, ... iterations; see :meth:`run` (defaults measured: :mod:`.tuning`).
        polish_after, polish_steps: episodes still uncertified after ``polish_after``
            iterations (0: never) are badly conditioned; when ``n·K ≤ 512`` they get up to
            ``polish_steps`` active-set Newton steps per stage of a ``λ2`` continuation
            (:func:`.polish.continuation_polish`; they count against ``max_iter``), then FISTA
            resumes from there.
            Features scaled by 1e2-1e6 (κ up to ~1e16) are certified in 120-300 iterations
            instead of not in 3000. The benchmark's episodes (≤ 20 iterations) never reach it.
        adaptive: in the working-set rounds (sparse solutions), take each step in the metric
            ``s·Q`` with a per-task scale ``s ∈ [1/16, 1]`` set from the curvature the last step
            met (:func:`adapt_scale`; a step that breaks the majorisation is rejected). ``Q``
            bounds the curvature of every feature of the working set, but features near the
            threshold barely bend the group norm: such steps meet 5-30% of it. 8 episodes,
            5-way, λ1/λ_max = 0.5, mean iterations: 1-shot p = 2560 7.25 → 5.4, 5-shot 10.9 →
            7.75, 15-shot 19 → 10.75 (p = 2560) and 16 → 9.6 (p = 16000).
        ridge_start: dense solutions (no working set) from a cold start first take this many
            FISTA steps on the ``λ1 = 0`` dual, in the Gram matrix (no pass over ``X``), and
            start from the best point of the segment towards them (:func:`ridge_warm_start`;
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
    ws_threshold: float = tuning.WS_THRESHOLD
    ws_max: float = 0.7
    ws_round: int = tuning.WS_ROUND
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
        self._check_integer("max_iter", 1, "a positive integer")
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {self.method!r}")
        self._check_integer("rank", 0, "a non-negative integer")
        self._check_integer("check_every", 1, "a positive integer")
        self._check_integer("ws_round", 1, "a positive integer")
        self._check_integer("polish_after", 0, "a non-negative integer (0: never)")
        self._check_integer("polish_steps", 1, "a positive integer")
        self._check_integer("ridge_start", 0, "a non-negative integer (0: off)")

    def _check_integer(self, name: str, least: int, what: str) -> None:
        value = getattr(self, name)
        if int(value) != value or value < least:
            raise ValueError(f"{name} must be {what}, got {value!r}")

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
        alpha = alpha_at_zero(Y64, self.tau) if init is None else project_simplex(init.double())
        rows = Rows(X)
        if not self.working_set or self.method == "pgd":
            return self._dense(rows, Y64, lam1, alpha, Mt0, init is None)
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
            idx, valid = padded_index(ws[todo])
            Xw = sub.gather_features(idx, valid)
            # the Newton polish goes by each task's total count, and may use the whole budget
            at = max(1, self.polish_after - int(iters[todo].max())) if self.polish_after else 0
            out = self._run(
                Rows(Xw), Y64[todo], lam1[todo], alpha[todo], min(rounds, left),
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
            nrm, S = scores(rows.subset(cert), Mt[cert], lam1[cert].double(), self.lam2)
            out = certificate(S, nrm, alpha[cert], Y64[cert], lam1[cert], self.lam2, self.tau)
            P[cert], Dv[cert], gap[cert] = out
        return SolverOutput(alpha, gap, iters, P, Dv, Mt, gram, gram_mask)

    def _dense(
        self, rows: Rows, Y: Tensor, lam1: Tensor, alpha: Tensor, Mt: Tensor | None, cold: bool
    ) -> SolverOutput:
        """The iterations on all features; a cold start first moves towards the ridge
        solution (:func:`ridge_warm_start`), whose metric the iterations then keep."""
        big = rows.X.numel() >= tuning.RIDGE_MIN_SIZE  # (all tasks' rows: called from run)
        if not (cold and big and self.ridge_start and self.method != "pgd"):
            return self._run(rows, Y, lam1, alpha, self.max_iter, Mt)
        if Mt is None:
            Mt = rows.left((Y - alpha).to(rows.X.dtype).transpose(1, 2))
        metric = self._metric(rows, Y.shape[2])
        alpha, Mt = ridge_warm_start(
            rows, Y, lam1, alpha, Mt, metric, self.lam2, self.tau, self.ridge_start
        )
        return self._run(rows, Y, lam1, alpha, self.max_iter, Mt, metric=metric)

    def _metric(self, rows: Rows, n_way: int) -> Metric:
        """The FISTA metric for these rows (scalar for ``"fista"``: rank 0)."""
        rank = self.rank if self.method == "vmfista" else 0
        return Metric.from_gram(rows.gram(), self.lam2, self.tau, rank, n_way)

    def _need_check(self, feas: Tensor, since: Tensor, last: bool) -> Tensor:
        """Tasks whose extrapolated point is infeasible and that get a certificate at ``α``
        anyway: every ``check_every`` iterations, and at the last."""
        if last:
            return ~feas
        return (~feas) & (since + 1 >= self.check_every)

    def _run(
        self,
        rows: Rows,
        Y: Tensor,
        lam1: Tensor,
        alpha: Tensor,
        max_iter: int,
        Mt: Tensor | None = None,
        polish_at: int | None = None,
        polish_budget: int | None = None,
        scale: Tensor | None = None,
        metric: Metric | None = None,
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
        polish = polish_at > 0 and self.method != "pgd" and Y.shape[1] * K <= tuning.POLISH_SIZE
        metric = self._metric(rows, K) if metric is None else metric
        gram = metric.gram
        if self.method == "pgd":
            metric = Metric(metric.top, metric.V, metric.lam, metric.top, metric.VV)
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
                t_next, mom = momentum(t, pgd)
                y = a + mom * (a - prev)
                My = torch.lerp(Mt_prev, Mt, (1.0 + mom).to(dt))  # M is linear in α: no pass
                nrm, S = scores(rb, My, lb, lam2)
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
                Pc, Dc, gc = certificate(S, nrm, y, Yb, lb, lam2, tau)
                cand_gap = torch.where(feas, gc, cand_gap)
                cand_P, cand_D, D_y = Pc, Dc, -Dc
            if bool(need.any()):
                nrm_a, S_a = scores(rb, Mt, lb, lam2) if at_a is None else at_a
                Pa, Da, ga = certificate(S_a, nrm_a, a, Yb, lb, lam2, tau)
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
                a_p, Mt_p, used = continuation_polish(
                    self, rb.subset(pend), Yb[pend], lb[pend], a[pend], Mt[pend], spread,
                    max_iter - k if polish_budget is None else polish_budget,
                )  # fmt: skip
                a, Mt = a.index_put((pend,), a_p), Mt.index_put((pend,), Mt_p)
                prev, Mt_prev, t = a, Mt, torch.ones_like(t)
                iters[live[pend]] += used
                k += max(1, int(used.max()))  # Newton steps count against max_iter
                continue
            grad = gradient_from_scores(S, y, Yb, tau)
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
                new, Mt_new, scale, rejected = adapt_scale(
                    scale, d, Qd, new, Mt_new, a, Mt, grad, nrm, D_y, Yb, lb, lam2, tau
                )
                scale_out[live] = scale
                t_next = restart(t_next, Qd, a, new, rejected)  # a rejected step restarts too
            elif not pgd:
                t_next = restart(t_next, mb.apply(new - y), a, new)
            if fuse:
                # the next step's extrapolated point is known before M at new: one fused pass
                # gives M at new and the scores at that point (and at new, for a certificate)
                t_nn, mom_n = momentum(t_next, pgd)
                y_n = new + mom_n * (new - a)
                need_n = self._need_check((y_n >= 0).all(-1).all(-1), since, k + 1 >= max_iter)
                Mt_new, My_n, nrm_n, S_n, at_new = step_pass(
                    rb, Yn, Mt, (1.0 + mom_n).to(dt), lb, lam2, bool(need_n.any())
                )
                ahead = (t_nn, mom_n, y_n, My_n, nrm_n, S_n, at_new)
            prev, Mt_prev, a, Mt, t = a, Mt, new, Mt_new, t_next
            iters[live[~done]] += 1  # certified tasks waiting for compaction do not count
            k += 1
        Mt_sol = torch.stack([src[row] for src, row in sol_Mt])
        return SolverOutput(sol, gap, iters, P, Dv, Mt_sol, gram, None, scale_out)
