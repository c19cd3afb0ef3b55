"""The paper's group-sparse head, as its released code runs it: a fixed number of projected-gradient
steps on the dual from a uniform start, no convergence check. Kept as a benchmark baseline only.

Differences from the paper's code, stated for honesty: the paper differentiates with a few
conjugate-gradient steps on an implicit system; here the (few) steps are unrolled by autograd,
which for 5 steps costs about the same and is exact for the 5-step map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metasparse.solvers.svm.problem import (
    DEFAULT_LAM2,
    DEFAULT_TAU,
    block_soft_threshold,
    objectives,
    onehot,
    project_simplex,
)


def pgd_group_sparse_svm(
    support: Tensor,
    support_labels: Tensor,
    n_way: int,
    lam1: Tensor,
    lam2: float = DEFAULT_LAM2,
    tau: float = DEFAULT_TAU,
    steps: int = 5,
) -> tuple[Tensor, Tensor]:
    """``steps`` projected-gradient steps (step ``1/L``) from ``α = 1/K``; returns the weights
    (T, K, p), differentiable by unrolling, and the relative duality gap reached (T,)."""
    Y = onehot(support_labels, n_way, support.dtype)
    T, K = Y.shape[0], Y.shape[2]
    with torch.no_grad():
        gram = support @ support.transpose(1, 2)
        L = torch.linalg.eigvalsh(gram)[:, -1] / lam2 + tau
        step = (1.0 / L).reshape(T, 1, 1)
    alpha = torch.full_like(Y, 1.0 / K)
    Xt = support.transpose(1, 2)
    for _ in range(steps):
        B = block_soft_threshold(Xt @ (Y - alpha), lam1)
        grad = -(support @ B) / lam2 + tau * (alpha - Y) - (1.0 - Y)
        alpha = project_simplex(alpha - step * grad)
    B = block_soft_threshold(Xt @ (Y - alpha), lam1)
    with torch.no_grad():
        _, _, gap = objectives(alpha.detach(), support.detach(), Y, lam1, lam2, tau)
    return (B / lam2).transpose(1, 2), gap
