"""Name → dataset builder, imported lazily so an unused reader costs nothing."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from metasparse.data.base import FewShotDataset

# name -> "module:function"; each function has the signature
#   build(root: Path | None, split: str, augment: bool, **options) -> FewShotDataset
_BUILDERS: dict[str, str] = {
    "glyphs": "metasparse.data.glyphs:build",
    "omniglot": "metasparse.data.omniglot:build",
    "miniimagenet": "metasparse.data.miniimagenet:build",
    "tieredimagenet": "metasparse.data.tieredimagenet:build",
    "cifar-fs": "metasparse.data.cifar:build_cifar_fs",
    "fc100": "metasparse.data.cifar:build_fc100",
}

SPLITS = ("train", "val", "test")  # every dataset's (what data check/prepare iterate over)
TRAINVAL = ("omniglot",)  # the datasets with a trainval split as well (train + val classes)


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return sorted(_BUILDERS)


def resolve_root(root: str | os.PathLike[str] | None) -> Path | None:
    """Resolve a dataset root: relative paths are taken under ``$METASPARSE_DATA`` if it is set."""
    if root is None or str(root) == "":
        return None
    path = Path(os.path.expandvars(os.path.expanduser(str(root))))
    base = os.environ.get("METASPARSE_DATA")
    if not path.is_absolute() and base:
        path = Path(base) / path
    return path


def build_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    augment: bool = False,
    **options: Any,
) -> FewShotDataset:
    """Build split ``split`` of dataset ``name`` (see :func:`available_datasets`)."""
    if name not in _BUILDERS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(available_datasets())}"
        )
    if split == "trainval" and name not in TRAINVAL:
        raise ValueError(
            f"split 'trainval' exists for {', '.join(TRAINVAL)} only, not {name!r}; choose one "
            f"of {', '.join(SPLITS)}"
        )
    if split not in (*SPLITS, "trainval"):
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    module_name, func_name = _BUILDERS[name].split(":")
    builder = getattr(importlib.import_module(module_name), func_name)
    dataset = builder(resolve_root(root), split, augment, **options)
    # Name every split once, here, so error messages can say "split 'test' of miniimagenet".
    if getattr(dataset, "name", None) is None:
        dataset.name = name
    if getattr(dataset, "split", None) is None:
        dataset.split = split
    return dataset
