"""Readers for the files learn2learn leaves on disk, for its users (learn2learn itself no longer
installs on current Python).

- miniImageNet: ``mini-imagenet-cache-{train,validation,test}.pkl``, each a pickled dict with
  ``image_data`` (uint8 N×84×84×3) and ``class_dict`` (wnid -> list of row indices).
- tieredImageNet: learn2learn downloads the MetaOptNet/Ren files (``{split}_images_png.pkl`` +
  ``{split}_labels.pkl``), read by :mod:`metasparse.data.tieredimagenet`.
- FC100: learn2learn reads MetaOptNet's ``FC100_{split}.pickle`` (see :mod:`metasparse.data.cifar`).
- CIFAR-FS: learn2learn writes PNG folders ``cifarfs/processed/{train,val,test}/<class>/*.png``,
  read here by :func:`list_image_folder`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from metasparse.data import safe_pickle

L2L_MINI_SPLITS = {"train": "train", "val": "validation", "test": "test"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def l2l_mini_file(root: Path, split: str) -> Path:
    """Path of learn2learn's miniImageNet cache file for ``split`` under ``root``."""
    return Path(root) / f"mini-imagenet-cache-{L2L_MINI_SPLITS[split]}.pkl"


def read_l2l_miniimagenet(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one learn2learn miniImageNet cache: (images N×84×84×3, labels, sorted class wnids).

    Raises:
        ValueError: missing keys, or ``class_dict`` indices that do not cover the images exactly
            once (a label/data length mismatch).
    """
    obj = safe_pickle.load(path)
    if not isinstance(obj, dict) or "image_data" not in obj or "class_dict" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path} is not a learn2learn miniImageNet cache: expected keys image_data and "
            f"class_dict, found {keys}"
        )
    images = np.asarray(obj["image_data"])
    class_dict = obj["class_dict"]
    names = sorted(class_dict)
    labels = np.full(len(images), -1, dtype=np.int64)
    for label, name in enumerate(names):
        idx = np.asarray(class_dict[name], dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(images)):
            raise ValueError(
                f"{path}: class {name!r} lists image indices up to {idx.max()} but image_data has "
                f"{len(images)} images (label/data length mismatch); the file is damaged: "
                "download it again"
            )
        if (labels[idx] != -1).any():
            raise ValueError(f"{path}: some images are listed under two classes (incl. {name!r})")
        labels[idx] = label
    if (labels == -1).any():
        raise ValueError(
            f"{path}: {int((labels == -1).sum())} of {len(images)} images belong to no class in "
            "class_dict (label/data length mismatch); the file is damaged: download it again"
        )
    return images, labels, names


def l2l_cifarfs_folder(root: Path) -> Path | None:
    """learn2learn's processed CIFAR-FS folder under ``root``, if there is one."""
    for cand in (Path(root) / "cifarfs" / "processed", Path(root) / "processed"):
        if all((cand / s).is_dir() for s in ("train", "val", "test")):
            return cand
    return None


def list_image_folder(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """List ``folder/<class>/*.png|jpg``: (files, labels, sorted class names)."""
    folder = Path(folder)
    names = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        for f in sorted((folder / name).iterdir()):
            if f.suffix.lower() in _IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    if not files:
        raise FileNotFoundError(f"no .png/.jpg images in class folders under {folder}")
    return files, np.asarray(labels, dtype=np.int64), names


def decode_image(data: bytes, source: str, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    """Decode PNG/JPEG bytes to a uint8 array (H, W, C), insisting on ``size`` = (H, W).

    Raises:
        ValueError: the bytes are not a complete image, or the image has another size.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im.convert(mode))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{source} is truncated or corrupt ({exc}); replace that file") from exc
    if arr.shape[:2] != tuple(size):
        raise ValueError(
            f"{source} is {arr.shape[1]}×{arr.shape[0]} pixels, expected {size[1]}×{size[0]}; "
            "this benchmark's files are stored pre-resized — use the standard release"
        )
    return arr if arr.ndim == 3 else arr[:, :, None]
