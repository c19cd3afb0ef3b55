"""Prototypical head (Snell et al., NeurIPS 2017), in MetaOptNet's ``ProtoNetHead`` form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metasparse.heads.base import Head, HeadStats


def class_means(support: Tensor, support_labels: Tensor, n_way: int) -> Tensor:
    """Per-task class means (tasks, n_way, d); ``ValueError`` when a class has no example."""
    onehot = F.one_hot(support_labels, n_way).to(support.dtype)  # (tasks, n, K)
    counts = onehot.sum(dim=1)  # (tasks, K)
    if bool((counts == 0).any()):
        task, cls = (counts == 0).nonzero()[0].tolist()
        raise ValueError(
            f"class {cls} of task {task} has no support example; a prototype needs at least "
            "one shot per class (check n_way against the labels)"
        )
    return onehot.transpose(1, 2).bmm(support) / counts.unsqueeze(-1)


def neg_sq_distances(x: Tensor, prototypes: Tensor) -> Tensor:
    """−‖x − c_k‖² for every row of ``x`` (tasks, m, d) and prototype (tasks, K, d)."""
    cross = x.bmm(prototypes.transpose(1, 2))
    return 2 * cross - (x * x).sum(-1, keepdim=True) - (prototypes * prototypes).sum(-1)[:, None]


class PrototypicalHead(Head):
    """Logits = negative squared Euclidean distance to the class means of the support set.

    Args:
        normalize: divide the distances by the feature dimension d, as MetaOptNet's
            ``ProtoNetHead(normalize=True)`` does (keeps logits O(1) for d = 16000).
        learn_scale, init_scale: the learnable logit scale of :class:`Head`.
        log_scale: learn the logit scale in log space (relative steps, always positive).
    """

    def __init__(
        self,
        normalize: bool = True,
        learn_scale: bool = True,
        init_scale: float = 1.0,
        log_scale: bool = False,
    ) -> None:
        super().__init__(learn_scale=learn_scale, init_scale=init_scale, log_scale=log_scale)
        self.normalize = bool(normalize)

    def fit_predict(
        self, query: Tensor, support: Tensor, support_labels: Tensor, n_way: int
    ) -> tuple[Tensor, HeadStats]:
        """Unscaled logits (tasks, n_query, n_way) and the support-set accuracy."""
        prototypes = class_means(support, support_labels, n_way)
        denom = query.shape[-1] if self.normalize else 1
        logits = neg_sq_distances(query, prototypes) / denom
        with torch.no_grad():
            support_pred = neg_sq_distances(support, prototypes).argmax(-1)
            support_acc = (support_pred == support_labels).to(torch.float64).mean()
        return logits, {"support_acc": float(support_acc)}
