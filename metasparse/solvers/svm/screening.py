"""Which features a task provably uses: a gap-safe sphere test from the solver's certificate.

A small duality gap does not identify the support: near ``λ_max`` the zero solution is itself
within ``1e-5`` of optimal while the optimum uses a feature. This test turns the certificate into
statements about the optimum (``docs/method.md`` §4b). For ``τ > 0`` the dual ``D`` is
``τ``-strongly convex, so a feasible ``α`` with absolute gap ``G`` lies within
``r = sqrt(2G/τ)`` of the dual optimum ``α*``; ``M_j = X_jᵀ(Y − α)`` then moves by at most
``‖X_j‖·r``, and feature ``j`` is

* provably unused (``W*_j = 0``) when ``‖M_j‖ + ‖X_j‖·r < λ1``;
* provably used (``W*_j ≠ 0``) when ``‖M_j‖ − ‖X_j‖·r > λ1``;
* undetermined otherwise: solve to a tighter gap to decide it.

A feature that is zero on the whole support set is unused at any ``λ1`` (its ``M_j`` is 0 for
every ``α``), which the strict inequality above cannot show at ``λ1 = 0``.

With ``τ = 0`` the dual is not strongly convex and every feature is undetermined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metasparse.solvers.svm.problem import certificate, column_norms, onehot, weights_from_m


@dataclass
class FeatureSupport:
    """Per task (T, p) masks of one feature test, and the certified radius (T,) it used."""

    used: Tensor  # W_j ≠ 0 at the given dual point (what the head uses)
    proven_used: Tensor  # W*_j ≠ 0 at the optimum
    proven_unused: Tensor  # W*_j = 0 at the optimum
    undetermined: Tensor  # neither, at the gap reached
    radius: Tensor  # bound on ‖α − α*‖_F (inf when τ = 0)
    gap: Tensor  # relative duality gap of the given point

    def fractions(self) -> dict[str, Tensor]:
        """Per-task fractions of the features in each class of the test."""
        return {
            "features_used": self.used.double().mean(-1),
            "features_proven_used": self.proven_used.double().mean(-1),
            "features_proven_unused": self.proven_unused.double().mean(-1),
            "features_undetermined": self.undetermined.double().mean(-1),
        }


@torch.no_grad()
def screen_features(
    support: Tensor,
    support_labels: Tensor,
    n_way: int,
    dual: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
) -> FeatureSupport:
    """The gap-safe sphere test at the feasible dual point ``dual`` (T, n, K), in float64.

    ``lam1`` is the absolute ``λ1`` per task (``result.lam1``). The gap is recomputed here from
    ``dual``, so the statement holds for exactly the point given.
    """
    X = support.detach().double()
    Y = onehot(support_labels, n_way, torch.float64)
    alpha = dual.detach().double()
    lam = lam1.detach().double().reshape(-1)
    if lam.numel() == 1 and X.shape[0] > 1:
        lam = lam.expand(X.shape[0])
    Mt = (Y - alpha).transpose(1, 2) @ X  # (T, K, p)
    nrm = column_norms(Mt)
    W = weights_from_m(Mt, lam, lam2)
    P, _, gap = certificate(X @ W.transpose(1, 2), nrm, alpha, Y, lam, lam2, tau)
    P_scale = P.abs().clamp_min(1.0)  # turns the relative gap back into an absolute one
    # the gap is summed in float64 from nonnegative terms; allow for its own rounding
    gap_abs = gap * P_scale + 64.0 * torch.finfo(torch.float64).eps * P_scale
    inf = torch.full_like(gap_abs, math.inf)
    radius = (2.0 * gap_abs / tau).sqrt() if tau > 0 else inf
    slack = X.norm(dim=1) * radius.unsqueeze(-1)  # (T, p): ‖X_j‖·r
    lam_col = lam.unsqueeze(-1)
    used = nrm > lam_col
    # a feature that is zero on every support example has M_j = 0 for every α: unused at any
    # λ1, including λ1 = 0 where the strict test cannot say so (dead ReLU features)
    dead = (X != 0).sum(1) == 0
    proven_unused = (nrm + slack < lam_col) | dead
    proven_used = (nrm - slack > lam_col) & ~dead
    return FeatureSupport(
        used=used,
        proven_used=proven_used,
        proven_unused=proven_unused,
        undetermined=~(proven_used | proven_unused),
        radius=radius,
        gap=gap,
    )
