"""A few-shot model = backbone (images → features) + head (support/query features → logits)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metasparse.backbones import build_backbone
from metasparse.heads import Head, build_head
from metasparse.heads.base import HeadStats


def build_component(kind: str, builder: Any, name: str, options: dict[str, Any]) -> Any:
    """``builder(name, **options)`` for a backbone or head, an unknown option raised as a
    ValueError that names the ``kind`` and the component instead of a bare TypeError."""
    try:
        return builder(name, **options)
    except TypeError as exc:  # unexpected keyword → name the offending option
        raise ValueError(f"bad {kind} option for {name!r}: {exc}") from exc


class FewShotModel(nn.Module):
    """Embeds support and query images in one backbone pass, then lets the head classify."""

    def __init__(self, backbone: nn.Module, head: Head, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.channels_last = channels_last
        if channels_last:
            backbone.to(memory_format=torch.channels_last)

    @classmethod
    def from_config(cls, model_cfg: Any, in_channels: int) -> FewShotModel:
        """Build from a :class:`metasparse.config.ModelConfig`."""
        backbone_options = {"in_channels": in_channels, **model_cfg.backbone_options}
        backbone = build_component("backbone", build_backbone, model_cfg.backbone, backbone_options)
        head = build_component("head", build_head, model_cfg.head, dict(model_cfg.head_options))
        return cls(backbone, head, channels_last=model_cfg.channels_last)

    def embed(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """(tasks, n, C, H, W) images → (tasks, n, d) features, support and query together."""
        tasks, n_s = support.shape[:2]
        n_q = query.shape[1]
        images = torch.cat([support.flatten(0, 1), query.flatten(0, 1)])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(images).flatten(1)
        f_s = feats[: tasks * n_s].reshape(tasks, n_s, -1)
        f_q = feats[tasks * n_s :].reshape(tasks, n_q, -1)
        return f_s, f_q

    def forward(
        self, support: Tensor, support_labels: Tensor, query: Tensor, n_way: int
    ) -> tuple[Tensor, HeadStats]:
        """Logits (tasks, n_query, n_way) and the head's statistics."""
        f_s, f_q = self.embed(support, query)
        return self.head(f_q, f_s, support_labels, n_way)


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
