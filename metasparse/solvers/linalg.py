"""Two small batched helpers of linear algebra shared by the solvers and the heads."""

from __future__ import annotations

import torch
from torch import Tensor


def spd_solve(A: Tensor, b: Tensor) -> Tensor:
    """``A x = b`` for a batch of symmetric positive semi-definite ``A`` (T, m, m), with ``b``
    (T, m) or several right-hand sides (T, m, k).

    Cholesky (no LU pivots: the batched CPU LU can return invalid pivots after
    ``torch.set_num_threads(n > 1)``); tasks whose matrix is singular to working precision
    (Cholesky fails) get the minimum-norm solution via an eigendecomposition instead of an
    error. Differentiable (the ridge head backpropagates through it).
    """
    vec = b.dim() == A.dim() - 1
    B = b.unsqueeze(-1) if vec else b
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(B, L)
    bad = info != 0
    if bool(bad.any()):
        evals, evecs = torch.linalg.eigh(A[bad])
        cut = evals.abs().amax(-1, keepdim=True) * A.shape[-1] * torch.finfo(A.dtype).eps
        inv = torch.where(evals.abs() > cut, 1.0 / evals, torch.zeros_like(evals))
        proj = evecs.transpose(1, 2) @ B[bad]
        x = x.index_put((bad,), evecs @ (inv.unsqueeze(-1) * proj))  # not in place: autograd
    return x.squeeze(-1) if vec else x


def padded_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of True entries per row of a (T, m) mask, padded to the max count, and validity."""
    counts = mask.sum(1)
    width = max(int(counts.max()) if mask.shape[0] else 0, 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid
