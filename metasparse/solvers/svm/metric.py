"""The fixed metric of the FISTA solver (:class:`Metric`) and its prox on the simplices.

The few large eigenvalues of the Gram matrix ``X Xᵀ`` (the features' mean and class means) are
what make plain FISTA slow on this dual; the metric handles them exactly, and its prox is an
``r·K`` semismooth-Newton problem per task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metasparse.solvers import tuning
from metasparse.solvers.svm.problem import project_simplex


@dataclass
class Metric:
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
    ) -> Metric:
        return cls.from_gram((X @ X.transpose(1, 2)).double(), lam2, tau, rank, n_way)

    @classmethod
    def from_gram(
        cls, gram: Tensor, lam2: float, tau: float, rank: int, n_way: int | None = None
    ) -> Metric:
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
            r = min(r, max(1, tuning.PROX_SIZE // n_way))  # keep it small when K is large
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

    def index(self, keep: Tensor) -> Metric:
        return Metric(self.c[keep], self.V[keep], self.lam[keep], self.top[keep], self.VV[keep])

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
