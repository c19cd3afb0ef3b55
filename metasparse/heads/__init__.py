"""Few-shot heads behind one interface (see :class:`metasparse.heads.base.Head`)."""

from __future__ import annotations

import importlib
from typing import Any

from metasparse.heads.base import Head, check_episode

# name -> "module:Class"
_HEADS: dict[str, str] = {
    "proto": "metasparse.heads.proto:PrototypicalHead",
    "ridge": "metasparse.heads.ridge:RidgeHead",
    "svm_cs": "metasparse.heads.svm_cs:SVMCSHead",
    "group_sparse_svm": "metasparse.heads.group_sparse_svm:GroupSparseSVMHead",
}


def available_heads() -> list[str]:
    """Names accepted by :func:`build_head`."""
    return sorted(_HEADS)


def build_head(name: str, **kwargs: Any) -> Head:
    """Instantiate head ``name`` with keyword options (its constructor's arguments)."""
    if name not in _HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {', '.join(available_heads())}")
    module_name, cls_name = _HEADS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**kwargs)


__all__ = ["Head", "available_heads", "build_head", "check_episode"]
