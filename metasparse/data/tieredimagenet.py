"""tieredImageNet (Ren et al. 2018): 84×84 RGB, 351/97/160 classes in 20/6/8 ImageNet categories.

Accepted layouts under the data root (auto-detected):

- ``prepared``: our memory-mapped format (``manifest.json`` in ``root`` or root/tieredimagenet);
- ``metaoptnet`` (also what learn2learn downloads): ``{train,val,test}_images_png.pkl`` — a list
  of PNG-encoded images (uint8 arrays from ``cv2.imencode``, or bytes) — plus
  ``{train,val,test}_labels.pkl`` (dict with ``label_specific`` and optionally
  ``label_specific_str``, ``label_general``, ``label_general_str``). The PNGs are decoded once
  into ``$METASPARSE_CACHE`` (keyed by file size and mtime); later loads are memory-mapped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from metasparse.data import prepared, safe_pickle
from metasparse.data.base import FewShotDataset
from metasparse.data.learn2learn_cache import decode_image
from metasparse.data.registry import SPLITS

NAME = "tieredimagenet"
IMAGE_SHAPE = (84, 84, 3)
CLASS_COUNTS = {"train": 351, "val": 97, "test": 160}


def expected_files(root: Path | None) -> str:
    """The files each accepted layout needs, for error messages."""
    return (
        f"tieredImageNet expects under {root} one of: (prepared) manifest.json + "
        "{split}_images.npy/{split}_labels.npy from `metasparse data convert`; (metaoptnet or "
        "learn2learn) {train,val,test}_images_png.pkl + {train,val,test}_labels.pkl"
    )


def _prepared_root(root: Path) -> Path | None:
    for cand in (root, root / NAME):
        if prepared.is_prepared(cand, NAME):
            return cand
    return None


def _pkl_dir(root: Path, split: str | None = None) -> Path | None:
    splits = [split] if split else list(SPLITS)
    for cand in (root, root / "tiered-imagenet", root / NAME):
        if any((cand / f"{s}_images_png.pkl").is_file() for s in splits):
            return cand
    return None


def detect_format(root: Path | None, split: str | None = None) -> str | None:
    """Which accepted layout is under ``root``, or ``None``."""
    if root is None or not Path(root).is_dir():
        return None
    if _prepared_root(Path(root)) is not None:
        return "prepared"
    if _pkl_dir(Path(root), split) is not None:
        return "metaoptnet"
    return None


def read_labels(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read ``{split}_labels.pkl``: (labels 0..K-1, class names from ``label_specific_str``)."""
    obj = safe_pickle.load(path)
    if not isinstance(obj, dict) or "label_specific" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected a dict with key label_specific, found {keys}")
    raw = np.asarray(obj["label_specific"], dtype=np.int64).reshape(-1)
    uniq, labels = np.unique(raw, return_inverse=True)
    strs = obj.get("label_specific_str")
    if strs is not None and len(strs) > int(uniq.max(initial=-1)):
        names = [str(strs[int(u)]) for u in uniq]
    else:
        names = [f"class_{int(u)}" for u in uniq]
    return labels.astype(np.int64), names


def _png_bytes(item: Any) -> bytes:
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise ValueError(f"expected PNG bytes or a uint8 array, got {type(item).__name__}")


def _decoded_split(folder: Path, split: str, cache_dir: Path | None) -> Path:
    img_path, lab_path = folder / f"{split}_images_png.pkl", folder / f"{split}_labels.pkl"
    for p in (img_path, lab_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing. {expected_files(folder)}")
    key = prepared.source_key(img_path, lab_path)
    base = Path(cache_dir) if cache_dir is not None else prepared.cache_root()
    done = base / f"{NAME}-{split}-{key}"
    if prepared.is_prepared(done):
        return done
    labels, names = read_labels(lab_path)
    pngs = safe_pickle.load(img_path)
    if not isinstance(pngs, list):
        raise ValueError(f"{img_path}: expected a list of PNG-encoded images")
    if len(pngs) != len(labels):
        raise ValueError(
            f"{img_path} holds {len(pngs)} images but {lab_path} has {len(labels)} labels "
            "(label/data length mismatch); one of the files is damaged or from another split: "
            "download both files of this split again"
        )
    return prepared.cached_decode(
        key,
        NAME,
        split,
        len(labels),
        IMAGE_SHAPE,
        lambda i: decode_image(_png_bytes(pngs[i]), f"{img_path}[{i}]", (84, 84)),
        labels,
        names,
        source=f"{img_path} + {lab_path}",
        cache_dir=cache_dir,
    )


def _check_label_files_disjoint(folder: Path) -> None:
    """Splits named by wnid (``label_specific_str``) must not share classes."""
    named = {}
    for s in SPLITS:
        path = folder / f"{s}_labels.pkl"
        if path.is_file():
            _, names = read_labels(path)
            if not all(n.startswith("class_") for n in names):
                named[s] = names
    prepared.check_disjoint(named)


def load_split_arrays(
    root: Path, split: str, cache_dir: Path | None = None, verify: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Read one split in whichever layout is under ``root``: (images, labels, names, format)."""
    root, fmt = prepared.locate_split(
        root, split, SPLITS, "tieredImageNet", detect_format, expected_files
    )
    if fmt == "prepared":
        folder = _prepared_root(root)
    else:
        pkl_dir = _pkl_dir(root, split)
        assert pkl_dir is not None
        _check_label_files_disjoint(pkl_dir)
        folder = _decoded_split(pkl_dir, split, cache_dir)
    assert folder is not None
    images, labels, names = prepared.load_split_arrays(folder, split, IMAGE_SHAPE, verify)
    return images, labels, names, fmt


def build(
    root: Path | None,
    split: str,
    augment: bool,
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
    **options: Any,
) -> FewShotDataset:
    """Split ``split`` of tieredImageNet from any accepted layout under ``root``.

    Options: ``image_size`` (default 84), ``cache_dir`` (decoded PNG cache), ``verify``.
    """
    return prepared.build_array_split(
        NAME, load_split_arrays, root, split, augment, image_size, cache_dir, verify, options
    )
