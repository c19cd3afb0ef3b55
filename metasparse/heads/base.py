"""The one interface every few-shot head implements (MetaOptNet-style, episodes batched)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from metasparse.utils import all_finite

HeadStats = dict[str, float]


def check_episode(query: Tensor, support: Tensor, support_labels: Tensor, n_way: int) -> None:
    """Validate a batch of episodes at the edge of every head; raise ``ValueError`` naming the fix.

    Expected shapes: ``query`` (tasks, n_query, d), ``support`` (tasks, n_support, d),
    ``support_labels`` (tasks, n_support) integers in ``[0, n_way)``.
    """
    if support.dim() != 3 or query.dim() != 3:
        raise ValueError(
            "heads take query (tasks, n_query, d) and support (tasks, n_support, d); got "
            f"query {tuple(query.shape)} and support {tuple(support.shape)} — flatten the "
            "backbone features and add the task dimension"
        )
    if support.shape[0] != query.shape[0] or support.shape[2] != query.shape[2]:
        raise ValueError(
            f"query {tuple(query.shape)} and support {tuple(support.shape)} must agree on "
            "tasks (dim 0) and feature size (dim 2)"
        )
    if support_labels.shape != support.shape[:2]:
        raise ValueError(
            f"support_labels must have shape (tasks, n_support) = {tuple(support.shape[:2])}, "
            f"got {tuple(support_labels.shape)}"
        )
    if support_labels.dtype.is_floating_point or support_labels.dtype == torch.bool:
        raise ValueError(f"support_labels must be an integer tensor, got {support_labels.dtype}")
    if n_way < 2:
        raise ValueError(f"n_way must be at least 2, got {n_way}")
    if support_labels.numel() and (
        int(support_labels.min()) < 0 or int(support_labels.max()) >= n_way
    ):
        raise ValueError(
            f"support_labels must lie in [0, {n_way}) for n_way={n_way}; got values in "
            f"[{int(support_labels.min())}, {int(support_labels.max())}]"
        )
    for name, t in (("support", support), ("query", query)):
        if not all_finite(t):
            raise ValueError(
                f"{name} features contain NaN or Inf; check the backbone output (a diverged "
                "learning rate or corrupt input images are the usual causes)"
            )


LOW_PRECISION = (torch.float16, torch.bfloat16)  # cast to float32 at the head's edge


class Head(nn.Module):
    """Base class: fit a classifier on the support set, score the queries.

    ``forward(query, support, support_labels, n_way)`` returns logits of shape
    (tasks, n_query, n_way) and a dict of scalar statistics (floats, averaged over tasks)
    that the training loop logs verbatim. Subclasses implement :meth:`fit_predict`.
    """

    def __init__(
        self, learn_scale: bool = True, init_scale: float = 1.0, log_scale: bool = False
    ) -> None:
        super().__init__()
        if log_scale and not init_scale > 0:
            raise ValueError(f"log_scale needs init_scale > 0, got {init_scale!r}")
        self.log_scale = bool(log_scale and learn_scale)
        if self.log_scale:  # learn log s: steps are relative, and s stays positive
            self.scale_log = nn.Parameter(torch.tensor(math.log(float(init_scale))))
        elif learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(init_scale)))

    def logit_scale(self) -> Tensor:
        """The factor applied to the logits (``exp`` of the parameter with ``log_scale``)."""
        return self.scale_log.exp() if self.log_scale else self.scale

    def fit_predict(
        self, query: Tensor, support: Tensor, support_labels: Tensor, n_way: int
    ) -> tuple[Tensor, HeadStats]:
        """Return unscaled logits (tasks, n_query, n_way) and statistics."""
        raise NotImplementedError

    def forward(
        self, query: Tensor, support: Tensor, support_labels: Tensor, n_way: int
    ) -> tuple[Tensor, HeadStats]:
        """Scaled logits and statistics. float16/bfloat16 features (a backbone under autocast)
        are cast to float32, and the head runs with autocast off: a certified gap of 1e-5 is
        far below half precision's resolution. The logits come back in float32."""
        check_episode(query, support, support_labels, n_way)
        if query.dtype in LOW_PRECISION or support.dtype in LOW_PRECISION:
            query, support = query.float(), support.float()
        with torch.autocast(support.device.type, enabled=False):
            logits, stats = self.fit_predict(query, support, support_labels.long(), n_way)
            return logits * self.logit_scale(), stats
