"""A few-shot model = backbone (images → features) + head (support/query features → logits)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metasparse.backbones import build_backbone
from metasparse.heads import Head, build_head
from metasparse.heads.base import HeadStats
from metasparse.precision import PRECISIONS, backbone_autocast, check_precision


def build_component(kind: str, builder: Any, name: str, options: dict[str, Any]) -> Any:
    """``builder(name, **options)`` for a backbone or head, an unknown option raised as a
    ValueError that names the ``kind`` and the component instead of a bare TypeError."""
    try:
        return builder(name, **options)
    except TypeError as exc:  # unexpected keyword → name the offending option
        raise ValueError(f"bad {kind} option for {name!r}: {exc}") from exc


class FewShotModel(nn.Module):
    """Embeds support and query images in one backbone pass, then lets the head classify.

    ``precision`` bfloat16/float16 runs the backbone under ``torch.autocast`` (its weights stay
    float32) and casts its features to float32 before the head, whose solver never sees half
    precision. ``compile_backbone`` compiles the backbone in place (``nn.Module.compile``), so
    its parameters and state-dict keys are those of the plain module.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        channels_last: bool = False,
        precision: str = "float32",
        compile_backbone: bool = False,
    ) -> None:
        super().__init__()
        check_precision(precision)
        self.backbone = backbone
        self.head = head
        self.channels_last = channels_last
        self.precision = precision
        if channels_last:
            backbone.to(memory_format=torch.channels_last)
        if compile_backbone:
            backbone.compile()  # no wrapper module: no "_orig_mod." in the state-dict keys

    @classmethod
    def from_config(cls, model_cfg: Any, in_channels: int) -> FewShotModel:
        """Build from a :class:`metasparse.config.ModelConfig`."""
        backbone_options = {"in_channels": in_channels, **model_cfg.backbone_options}
        backbone = build_component("backbone", build_backbone, model_cfg.backbone, backbone_options)
        head = build_component("head", build_head, model_cfg.head, dict(model_cfg.head_options))
        return cls(
            backbone,
            head,
            channels_last=model_cfg.channels_last,
            precision=model_cfg.backbone_precision,
            compile_backbone=model_cfg.compile,
        )

    def features(self, images: Tensor) -> Tensor:
        """(N, C, H, W) images → (N, d) float32 features, under the backbone's autocast."""
        return backbone_features(self.backbone, images, self.precision)

    def embed(
        self, support: Tensor, query: Tensor, group_episodes: int = 0
    ) -> tuple[Tensor, Tensor]:
        """(tasks, n, C, H, W) images → (tasks, n, d) features, support and query together;
        ``group_episodes`` > 0 embeds the tasks in groups of that many (see
        :func:`embed_episodes`)."""
        return embed_episodes(
            self.backbone, support, query, self.channels_last, group_episodes, self.precision
        )

    def forward(
        self, support: Tensor, support_labels: Tensor, query: Tensor, n_way: int
    ) -> tuple[Tensor, HeadStats]:
        """Logits (tasks, n_query, n_way) and the head's statistics."""
        f_s, f_q = self.embed(support, query)
        return self.head(f_q, f_s, support_labels, n_way)


def backbone_features(backbone: nn.Module, images: Tensor, precision: str = "float32") -> Tensor:
    """``backbone(images)`` flattened to (N, d); under bfloat16/float16 autocast, cast back to
    float32 here, at the backbone/head boundary (the head's solver needs float32 or more)."""
    with backbone_autocast(precision, images.device.type):
        feats = backbone(images).flatten(1)
    return feats if PRECISIONS[precision] is None else feats.float()


def _embed_all(
    backbone: nn.Module, support: Tensor, query: Tensor, channels_last: bool, precision: str
) -> tuple[Tensor, Tensor]:
    """One backbone pass over every support and query image of the batch."""
    tasks, n_s = support.shape[:2]
    n_q = query.shape[1]
    images = torch.cat([support.flatten(0, 1), query.flatten(0, 1)])
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    feats = backbone_features(backbone, images, precision)
    f_s = feats[: tasks * n_s].reshape(tasks, n_s, -1)
    f_q = feats[tasks * n_s :].reshape(tasks, n_q, -1)
    return f_s, f_q


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)  # what embed_episodes groups


def embed_episodes(
    backbone: nn.Module,
    support: Tensor,
    query: Tensor,
    channels_last: bool = False,
    group_episodes: int = 0,
    precision: str = "float32",
) -> tuple[Tensor, Tensor]:
    """Features of a batch of episodes; ``group_episodes`` > 0 runs the backbone on groups of
    that many episodes, so that BatchNorm normalises each group over its own images.
    ``precision``: see :func:`backbone_features`.

    That is what each process of a distributed run does with its share of the batch, so one
    process grouped by ``episodes_per_batch / N`` computes what N processes compute. Each
    group's BatchNorm running statistics are updated from the same starting values and then
    averaged, as distributed training averages them over the processes. 0 (or a group as large
    as the batch) is one pass over the whole batch.
    """
    tasks = support.shape[0]
    if group_episodes <= 0 or group_episodes >= tasks:
        return _embed_all(backbone, support, query, channels_last, precision)
    if tasks % group_episodes:
        raise ValueError(
            f"group_episodes={group_episodes} must divide the {tasks} episodes of the batch; "
            "use a divisor, or 0 for one group"
        )
    norms = [
        m
        for m in backbone.modules()
        if isinstance(m, BATCH_NORMS) and m.training and m.running_mean is not None
    ]
    # Each group starts from fresh copies of the running statistics: the tensors a group's
    # forward pass updated are saved for its backward pass, so they must not change again.
    start = [{k: b.detach().clone() for k, b in m.named_buffers(recurse=False)} for m in norms]
    sums = [(torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)) for m in norms]
    parts = []
    for first in range(0, tasks, group_episodes):
        for m, buffers in zip(norms, start, strict=True):
            for k, b in buffers.items():
                setattr(m, k, b.clone())
        group = slice(first, first + group_episodes)
        parts.append(_embed_all(backbone, support[group], query[group], channels_last, precision))
        with torch.no_grad():
            for m, (mean, var) in zip(norms, sums, strict=True):
                mean += m.running_mean
                var += m.running_var
    n_groups = tasks // group_episodes
    for m, (mean, var) in zip(norms, sums, strict=True):
        m.running_mean, m.running_var = mean / n_groups, var / n_groups
    return torch.cat([f for f, _ in parts]), torch.cat([f for _, f in parts])


class Embedder(nn.Module):
    """The backbone half of a :class:`FewShotModel` as a module of its own: what distributed
    training wraps in DistributedDataParallel (the step back-propagates head and backbone
    apart, so the head's few parameters are averaged separately)."""

    def __init__(
        self, backbone: nn.Module, channels_last: bool = False, precision: str = "float32"
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels_last = channels_last
        self.precision = precision

    def forward(
        self, support: Tensor, query: Tensor, group_episodes: int = 0
    ) -> tuple[Tensor, Tensor]:
        """:func:`embed_episodes` with this backbone."""
        return embed_episodes(
            self.backbone, support, query, self.channels_last, group_episodes, self.precision
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use device=cpu")
    return device
