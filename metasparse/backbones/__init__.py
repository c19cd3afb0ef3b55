"""Backbones: images (B, C, H, W) → flat features (B, d)."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

_BACKBONES: dict[str, str] = {
    "conv4": "metasparse.backbones.conv4:Conv4",
    "resnet12": "metasparse.backbones.resnet12:ResNet12",
}


def available_backbones() -> list[str]:
    """Names accepted by :func:`build_backbone`."""
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate backbone ``name`` with keyword options (its constructor's arguments)."""
    if name not in _BACKBONES:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {', '.join(available_backbones())}"
        )
    module_name, cls_name = _BACKBONES[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)(**kwargs)


__all__ = ["available_backbones", "build_backbone"]
