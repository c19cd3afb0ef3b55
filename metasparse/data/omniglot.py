"""Real Omniglot (Lake et al. 2015), read straight from the official zips.

Preprocessing (shared with the 20-run one-shot challenge reader): the 105×105 binary PNG is
converted to grayscale, resized to ``image_size`` with Lanczos antialiasing, and **inverted** so
strokes are bright (255) on a black (0) background — the convention of Prototypical Networks
(Snell et al. 2017); it makes zero padding and zero-filled shifts look like blank paper.

Split schemes (package data ``metasparse/data/splits/omniglot.json``):

- ``vinyals`` — Vinyals et al. (2016) as distributed by torchmeta: 1028 train / 172 val / 423 test
  characters (train+val = the 1200 characters of Vinyals; test = the remaining 423).
- ``lake`` — Lake et al.'s background/evaluation division: train = the background set
  (``background="full"``: 30 alphabets, 964 characters) minus 5 held-out val alphabets (Armenian,
  Bengali, Hebrew, Mkhedruli, N_Ko: 183 characters), leaving 781 characters; or one of the
  minimal background sets (``small1``: 136, ``small2``: 156 characters, which share no alphabet
  with val); val = those 5 alphabets (read from ``images_background.zip``); test = the evaluation
  set (20 alphabets, 659 characters).

``trainval`` is train and val together (ProtoNets' final training set). Each character has 20
drawings. With ``rotations`` the train (and trainval) split gets every character rotated
by 0/90/180/270° as 4 classes (×4 classes); ``rotate_eval`` does the same for val and test.
"""

from __future__ import annotations

import functools
import io
import json
import re
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metasparse.data.base import ArrayDataset
from metasparse.data.cache import cached_arrays, file_fingerprint

SPLITS = ("train", "val", "test", "trainval")
SCHEMES = ("vinyals", "lake")
BACKGROUNDS = ("full", "small1", "small2")
ZIP_FILES = {
    "background": "images_background.zip",
    "evaluation": "images_evaluation.zip",
    "small1": "images_background_small1.zip",
    "small2": "images_background_small2.zip",
}
SOURCE_URL = "https://github.com/brendenlake/omniglot (folder python/)"
_CACHE_VERSION = 1
_PNG = re.compile(r"^(?:[^/]+/)?([^/]+)/(character\d+)/([^/]+\.png)$")


def preprocess_png(data: bytes, image_size: int = 28) -> np.ndarray:
    """One Omniglot PNG (bytes) → uint8 (image_size, image_size), bright strokes on black."""
    with Image.open(io.BytesIO(data)) as img:
        gray = img.convert("L")
        if gray.size != (image_size, image_size):
            gray = gray.resize((image_size, image_size), Image.Resampling.LANCZOS)
        arr = np.asarray(gray, dtype=np.uint8)
    return 255 - arr


def _decode_zip(zip_path: Path, image_size: int) -> dict[str, np.ndarray]:
    """Decode every ``<Alphabet>/characterNN/<file>.png`` of a zip, sorted by path."""
    with zipfile.ZipFile(zip_path) as zf:
        entries = sorted(
            (m.group(1), m.group(2), m.group(3), name)
            for name in zf.namelist()
            if (m := _PNG.match(name))
        )
        if not entries:
            raise ValueError(
                f"{zip_path} holds no '<Alphabet>/characterNN/<id>_<drawer>.png' images; is it an "
                f"Omniglot zip from {SOURCE_URL}?"
            )
        images = np.stack([preprocess_png(zf.read(e[3]), image_size) for e in entries])
    return {
        "images": images,
        "characters": np.array([f"{a}/{c}" for a, c, _, _ in entries]),
        "files": np.array([f for _, _, f, _ in entries]),
    }


@functools.lru_cache(maxsize=8)
def _load_zip_cached(zip_path: str, fingerprint: str, image_size: int) -> dict[str, np.ndarray]:
    key = {
        "zip": Path(zip_path).name,
        "fingerprint": fingerprint,
        "image_size": image_size,
        "version": _CACHE_VERSION,
    }
    arrays = cached_arrays(
        f"omniglot-{Path(zip_path).stem}-{image_size}",
        key,
        lambda: _decode_zip(Path(zip_path), image_size),
    )
    for value in arrays.values():
        value.setflags(write=False)
    return arrays


def zip_path(root: Path | str | None, which: str) -> Path:
    """The path of zip ``which`` (background/evaluation/small1/small2), checked to exist."""
    if root is None:
        raise ValueError(
            "omniglot needs a root: the folder holding images_background.zip and "
            "images_evaluation.zip (set data.root)"
        )
    path = Path(root) / ZIP_FILES[which]
    if not path.is_file():
        raise FileNotFoundError(
            f"Omniglot file {path} not found: expected {ZIP_FILES[which]} in {Path(root)}; "
            f"download it from {SOURCE_URL}"
        )
    return path


def load_zip(path: Path | str, image_size: int = 28) -> dict[str, np.ndarray]:
    """Decoded images (N, H, W) uint8, ``characters`` ('Alphabet/characterNN') and ``files``.

    Cached on disk (see :mod:`metasparse.data.cache`) and in memory; arrays are read-only.
    """
    path = Path(path).resolve()
    return _load_zip_cached(str(path), file_fingerprint(path), int(image_size))


@functools.cache
def split_definitions() -> dict[str, Any]:
    """The packaged split lists (``metasparse/data/splits/omniglot.json``)."""
    text = resources.files("metasparse.data").joinpath("splits/omniglot.json").read_text()
    return json.loads(text)


def vinyals_characters(split: str) -> dict[str, list[str]]:
    """The Vinyals split as ``{"background"/"evaluation": ["Alphabet/characterNN", ...]}``."""
    spec = split_definitions()["vinyals"][split]
    return {
        zset: [
            f"{alphabet}/character{n:02d}"
            for alphabet, (first, last) in alphabets.items()
            for n in range(first, last + 1)
        ]
        for zset, alphabets in spec.items()
    }


def _select(arrays: dict[str, np.ndarray], keep: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(character, image indices) for each kept character, in sorted order."""
    chars = arrays["characters"]
    idx = np.flatnonzero(keep)
    uniq, start = np.unique(chars[idx], return_index=True)
    bounds = [*start.tolist(), idx.size]
    return [(str(c), idx[bounds[i] : bounds[i + 1]]) for i, c in enumerate(uniq)]


def _split_members(
    root: Path | None, split: str, scheme: str, background: str, image_size: int
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(class name, images of that character) for every character of the split."""
    if split == "trainval":  # the final training set of ProtoNets: train and val characters
        return [
            *_split_members(root, "train", scheme, background, image_size),
            *_split_members(root, "val", scheme, background, image_size),
        ]
    members: list[tuple[str, np.ndarray, np.ndarray]] = []

    def add(which: str, keep_fn: Any) -> None:
        arrays = load_zip(zip_path(root, which), image_size)
        keep = keep_fn(arrays["characters"])
        for char, idx in _select(arrays, keep):
            members.append((f"{Path(ZIP_FILES[which]).stem}/{char}", arrays["images"], idx))

    if scheme == "vinyals":
        for zset, chars in vinyals_characters(split).items():
            wanted = np.array(chars)
            add(zset, lambda c, w=wanted: np.isin(c, w))
        expected = sum(len(v) for v in vinyals_characters(split).values())
    else:
        val_alphabets = np.array(split_definitions()["lake"]["val"]["background"])

        def alphabet(c: np.ndarray) -> np.ndarray:
            return np.array([s.split("/", 1)[0] for s in c])

        if split == "test":
            add("evaluation", lambda c: np.ones(c.shape, dtype=bool))
        elif split == "val":
            add("background", lambda c: np.isin(alphabet(c), val_alphabets))
        elif background == "full":
            add("background", lambda c: ~np.isin(alphabet(c), val_alphabets))
        else:
            add(background, lambda c: ~np.isin(alphabet(c), val_alphabets))
        expected = len(members)
    if len(members) != expected:
        raise ValueError(
            f"the Omniglot zips under {root} hold {len(members)} of the {expected} characters "
            f"of the {scheme} {split!r} split; are they the official files from {SOURCE_URL}?"
        )
    return members


def augmentation() -> Any:
    """Training augmentation: random shifts of up to 2 pixels (black fill), then to [0, 1]."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomAffine(degrees=0, translate=(0.07, 0.07), fill=0),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def build(
    root: Path | None,
    split: str,
    augment: bool,
    *,
    split_scheme: str = "vinyals",
    background: str = "full",
    rotations: bool = True,
    rotate_eval: bool = False,
    image_size: int = 28,
) -> ArrayDataset:
    """Split ``split`` of Omniglot as 1×H×W uint8 images (bright strokes), one class per character.

    Args:
        root: folder holding ``images_background.zip`` and ``images_evaluation.zip`` (and the
            ``images_background_small{1,2}.zip`` for ``background="small1"/"small2"``).
        split: ``train``, ``val``, ``test`` or ``trainval`` (train and val together, rotated
            as train: the set ProtoNets trains its final models on).
        augment: random shifts at load time.
        split_scheme: ``vinyals`` or ``lake`` (see the module docstring).
        background: ``full``, ``small1`` or ``small2``: the train set of the ``lake`` scheme.
        rotations: train classes also rotated by 90/180/270° as new classes.
        rotate_eval: the same for val and test.
        image_size: side of the square images.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split_scheme not in SCHEMES:
        raise ValueError(f"unknown split_scheme {split_scheme!r}; choose one of {SCHEMES}")
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; choose one of {BACKGROUNDS}")
    if split_scheme == "vinyals" and background != "full":
        raise ValueError(
            f"background={background!r} selects the train set of split_scheme='lake'; "
            "use split_scheme='lake' or background='full'"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    members = _split_members(root, split, split_scheme, background, image_size)
    rotate = rotations if split in ("train", "trainval") else rotate_eval
    quarter_turns = (0, 1, 2, 3) if rotate else (0,)
    blocks: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    names: list[str] = []
    for k in quarter_turns:
        for name, images, idx in members:
            block = images[idx]
            blocks.append(np.rot90(block, k, axes=(1, 2)) if k else block)
            labels.append(np.full(idx.size, len(names), dtype=np.int64))
            names.append(f"{name}/rot{90 * k:03d}" if rotate else name)
    dataset = ArrayDataset(
        np.ascontiguousarray(np.concatenate(blocks)),
        np.concatenate(labels),
        names,
        transform=augmentation() if augment else None,
    )
    dataset.name = "omniglot"
    dataset.split = split
    return dataset


__all__ = [
    "ZIP_FILES",
    "augmentation",
    "build",
    "load_zip",
    "preprocess_png",
    "split_definitions",
    "vinyals_characters",
    "zip_path",
]
