"""Two small batched helpers of linear algebra shared by the solvers and the heads."""

from __future__ import annotations

import torch
from torch import Tensor


def spd_solve(A: Tensor, b: Tensor) -> Tensor:
    """``A x = b`` for a batch of symmetric positive semi-definite ``A`` (T, m, m), with ``b``
    (T, m) or several right-hand sides (T, m, k).

    Cholesky (no LU pivots: the batched CPU LU can return invalid pivots after
    ``torch.set_num_threads(n > 1)``); tasks whose matrix is singular to working precision
    (Cholesky fails) are solved again in float64, and where that fails too get the
    minimum-norm solution via an eigendecomposition instead of an error. Differentiable (the
    ridge head backpropagates through it).
    """
    vec = b.dim() == A.dim() - 1
    B = b.unsqueeze(-1) if vec else b
    L, info = torch.linalg.cholesky_ex(A)
    bad = info != 0
    if not bool(bad.any()):
        x = torch.cholesky_solve(B, L)
        return x.squeeze(-1) if vec else x
    # the failed tasks must stay out of the graph of the others: a NaN factor in it would turn
    # their (zero) gradients into NaN through the backward of the solve
    good = ~bad
    x = B.new_zeros(B.shape)
    if bool(good.any()):  # factorised again: L's backward would see the NaN factors
        x = x.index_put((good,), torch.cholesky_solve(B[good], torch.linalg.cholesky(A[good])))
    if A.dtype != torch.float64:
        # singular in float32 only (a ridge λ below the Gram's rounding): float64 resolves it,
        # and keeps gradients finite where the eigendecomposition's would not be
        x = x.index_put((bad,), spd_solve(A[bad].double(), B[bad].double()).to(x.dtype))
    else:
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
