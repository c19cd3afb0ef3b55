"""The features ``X`` of a subset of tasks, as the solver uses them (:class:`Rows`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metasparse.solvers import products


class Rows:
    """The features ``X`` (T, n, p) of a subset of tasks, for the solver's two products.

    On the CPU a subset is used through per-task views: copying ``X[keep]`` would cost about
    three passes over ``X`` (a fresh (B, n, p) tensor is page-faulted in), more than the
    remaining iterations of a batch that is mostly certified save. Other devices gather.
    """

    def __init__(self, X: Tensor, ids: list[int] | None = None) -> None:
        self.X, self.ids = X, ids

    def subset(self, keep: Tensor) -> Rows:
        """The rows of the tasks ``keep`` (a (B,) bool mask or index tensor of this subset)."""
        if self.X.device.type != "cpu":
            return Rows(self.X[keep])
        ids = list(range(self.X.shape[0])) if self.ids is None else self.ids
        sel = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        picked = [ids[i] for i in sel.tolist()]
        return Rows(self.X, None if picked == list(range(self.X.shape[0])) else picked)

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
