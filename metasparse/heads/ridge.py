"""R2D2 ridge-regression head (Bertinetto et al., ICLR 2019), as MetaOptNet's ``R2D2Head``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metasparse.heads.base import Head, HeadStats
from metasparse.solvers.linalg import spd_solve

_SOLVES = ("auto", "dual", "primal")


def ridge_weights(support: Tensor, targets: Tensor, lam: float, solve: str = "auto") -> Tensor:
    """Minimiser W (tasks, d, K) of ‖X W − Y‖² + λ‖W‖², batched over tasks.

    Dual form ``Xᵀ (X Xᵀ + λ I_n)⁻¹ Y`` (an n×n system) when n < d or ``solve="dual"``,
    primal form ``(Xᵀ X + λ I_d)⁻¹ Xᵀ Y`` otherwise; the two are equal for λ > 0.
    """
    if solve not in _SOLVES:
        raise ValueError(f"solve must be one of {_SOLVES}, got {solve!r}")
    n, d = support.shape[1], support.shape[2]
    dual = solve == "dual" or (solve == "auto" and n < d)
    xt = support.transpose(1, 2)
    if dual:
        gram = support.bmm(xt) + lam * torch.eye(n, dtype=support.dtype, device=support.device)
        return xt.bmm(spd_solve(gram, targets))
    cov = xt.bmm(support) + lam * torch.eye(d, dtype=support.dtype, device=support.device)
    return spd_solve(cov, xt.bmm(targets))


class RidgeHead(Head):
    """Closed-form ridge regression onto one-hot labels; logits = query · W.

    Args:
        lam: ridge strength λ (MetaOptNet's ``R2D2Head`` default 50.0); must be > 0.
        solve: ``"auto"`` (dual n×n system when n < d, else primal d×d), ``"dual"``, ``"primal"``.
        learn_scale, init_scale: the learnable logit scale of :class:`Head`.
        log_scale: learn the logit scale in log space (relative steps, always positive).
    """

    def __init__(
        self,
        lam: float = 50.0,
        solve: str = "auto",
        learn_scale: bool = True,
        init_scale: float = 1.0,
        log_scale: bool = False,
    ) -> None:
        super().__init__(learn_scale=learn_scale, init_scale=init_scale, log_scale=log_scale)
        if not lam > 0:
            raise ValueError(f"lam must be positive (it makes the system invertible), got {lam!r}")
        if solve not in _SOLVES:
            raise ValueError(f"solve must be one of {_SOLVES}, got {solve!r}")
        self.lam = float(lam)
        self.solve = solve

    def fit_predict(
        self, query: Tensor, support: Tensor, support_labels: Tensor, n_way: int
    ) -> tuple[Tensor, HeadStats]:
        """Unscaled logits (tasks, n_query, n_way) and the support-set accuracy."""
        targets = F.one_hot(support_labels, n_way).to(support.dtype)
        weights = ridge_weights(support, targets, self.lam, self.solve)
        logits = query.bmm(weights)
        with torch.no_grad():
            support_pred = support.bmm(weights).argmax(-1)
            support_acc = (support_pred == support_labels).to(torch.float64).mean()
        return logits, {"support_acc": float(support_acc)}
