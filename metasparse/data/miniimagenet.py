"""miniImageNet (Vinyals et al. 2016; Ravi & Larochelle split, 64/16/20 classes of 84×84 RGB).

Accepted layouts under the data root (auto-detected, first match wins):

- ``prepared``: our memory-mapped format (``manifest.json``; see :mod:`metasparse.data.prepared`);
- ``metaoptnet``: ``miniImageNet_category_split_train_phase_train.pickle``,
  ``miniImageNet_category_split_{val,test}.pickle`` (dicts with ``data`` uint8 N×84×84×3,
  ``labels`` and optionally ``catname2label``; Python 2 pickles);
- ``learn2learn``: ``mini-imagenet-cache-{train,validation,test}.pkl``;
- ``csv``: Ravi's ``{train,val,test}.csv`` (``filename,label``) with the JPEGs in ``images/``,
  ``images.zip`` or ``images_{split}.zip``. Decoded arrays are cached (``$METASPARSE_CACHE``),
  keyed by the source files' size and mtime, so only the first load decodes.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from metasparse.data import prepared, safe_pickle
from metasparse.data.base import FewShotDataset
from metasparse.data.learn2learn_cache import decode_image, l2l_mini_file, read_l2l_miniimagenet
from metasparse.data.registry import SPLITS

NAME = "miniimagenet"
IMAGE_SHAPE = (84, 84, 3)
CLASS_COUNTS = {"train": 64, "val": 16, "test": 20}
METAOPTNET_FILES = {
    "train": "miniImageNet_category_split_train_phase_train.pickle",
    "val": "miniImageNet_category_split_val.pickle",
    "test": "miniImageNet_category_split_test.pickle",
}
FORMATS = ("prepared", "metaoptnet", "learn2learn", "csv")


def expected_files(root: Path | None) -> str:
    """The files each accepted layout needs, for error messages."""
    return (
        f"miniImageNet expects under {root} one of: (prepared) manifest.json + "
        "{split}_images.npy/{split}_labels.npy from `metasparse data convert`; (metaoptnet) "
        + ", ".join(METAOPTNET_FILES.values())
        + "; (learn2learn) mini-imagenet-cache-{train,validation,test}.pkl; (csv) "
        "{train,val,test}.csv with images/*.jpg or images.zip or images_{train,val,test}.zip"
    )


def _prepared_root(root: Path) -> Path | None:
    for cand in (root, root / NAME):
        if prepared.is_prepared(cand, NAME):
            return cand
    return None


def _image_source(root: Path, split: str) -> Path | None:
    for cand in (root / "images", root / f"images_{split}.zip", root / "images.zip"):
        if cand.exists():
            return cand
    return None


def detect_format(root: Path | None, split: str | None = None) -> str | None:
    """Which accepted layout is under ``root`` (for ``split`` if given), or ``None``."""
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root)
    splits = [split] if split else list(SPLITS)
    if _prepared_root(root) is not None:
        return "prepared"
    if any((root / METAOPTNET_FILES[s]).is_file() for s in splits):
        return "metaoptnet"
    if any(l2l_mini_file(root, s).is_file() for s in splits):
        return "learn2learn"
    if any((root / f"{s}.csv").is_file() and _image_source(root, s) for s in splits):
        return "csv"
    return None


def read_ravi_csv(path: Path) -> tuple[list[str], list[str]]:
    """Rows of a Ravi split csv (header ``filename,label``): (file names, wnids)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path} is not a Ravi split csv: the header must be 'filename,label'")
    body = [r for r in rows[1:] if r]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != 2]
    if bad:
        raise ValueError(f"{path}: line {bad[0]} does not have 2 columns (filename,label)")
    return [r[0] for r in body], [r[1] for r in body]


def _check_csv_splits_disjoint(root: Path) -> None:
    present = {
        s: set(read_ravi_csv(root / f"{s}.csv")[1]) for s in SPLITS if (root / f"{s}.csv").is_file()
    }
    prepared.check_disjoint(present)


class _ImageReader:
    """Reads image bytes by file name from an ``images/`` folder or a zip (any folder inside)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        self._entries: dict[str, str] = {}
        if source.is_file():
            try:
                self._zip = zipfile.ZipFile(source)
            except zipfile.BadZipFile as exc:
                raise ValueError(
                    f"{source} is not a readable zip (truncated or corrupt); download it again"
                ) from exc
            for info in self._zip.infolist():
                if not info.is_dir():
                    self._entries[os.path.basename(info.filename)] = info.filename

    def read(self, name: str) -> bytes:
        if self._zip is None:
            path = self.source / name
            if not path.is_file():
                raise FileNotFoundError(
                    f"image {name} listed in the csv is missing from {path.parent}; restore it "
                    "or download and prepare the dataset again (data/README.md)"
                )
            return path.read_bytes()
        entry = self._entries.get(name)
        if entry is None:
            raise FileNotFoundError(
                f"image {name} listed in the csv is missing from {self.source}; restore it or "
                "download and prepare the dataset again (data/README.md)"
            )
        try:
            return self._zip.read(entry)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ValueError(f"{self.source}: entry {entry} is corrupt ({exc})") from exc

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _csv_split(root: Path, split: str, cache_dir: Path | None) -> Path:
    csv_path = root / f"{split}.csv"
    source = _image_source(root, split)
    if not csv_path.is_file() or source is None:
        raise FileNotFoundError(
            f"miniImageNet split {split!r}: need {csv_path} and images/ or images_{split}.zip or "
            f"images.zip in {root}"
        )
    _check_csv_splits_disjoint(root)
    files, wnids = read_ravi_csv(csv_path)
    names = sorted(set(wnids))
    index = {n: i for i, n in enumerate(names)}
    labels = np.asarray([index[w] for w in wnids], dtype=np.int64)
    key = prepared.source_key(csv_path, source)
    reader = _ImageReader(source)
    try:
        return prepared.cached_decode(
            key,
            NAME,
            split,
            len(files),
            IMAGE_SHAPE,
            lambda i: decode_image(reader.read(files[i]), f"{source}:{files[i]}", (84, 84)),
            labels,
            names,
            source=f"csv {csv_path} + {source}",
            cache_dir=cache_dir,
        )
    finally:
        reader.close()


def read_metaoptnet_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a MetaOptNet-style pickle (``data``, ``labels``, optional ``catname2label``).

    Labels are renumbered 0..K-1 in increasing order of the stored label; class names come from
    ``catname2label`` when present, else ``class_<stored label>``.
    """
    obj = safe_pickle.load(path)
    if not isinstance(obj, dict) or "data" not in obj or "labels" not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: expected a dict with keys data and labels, found {keys}")
    images = np.asarray(obj["data"])
    raw = np.asarray(obj["labels"], dtype=np.int64).reshape(-1)
    if len(images) != len(raw):
        raise ValueError(
            f"{path}: {len(images)} images but {len(raw)} labels (label/data length mismatch); "
            "the file is damaged: download it again"
        )
    uniq, labels = np.unique(raw, return_inverse=True)
    label2name = {int(v): str(k) for k, v in dict(obj.get("catname2label") or {}).items()}
    names = [label2name.get(int(u), f"class_{int(u)}") for u in uniq]
    return images, labels.astype(np.int64), names


def load_split_arrays(
    root: Path, split: str, cache_dir: Path | None = None, verify: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Read one split in whichever layout is under ``root``: (images, labels, names, format)."""
    root, fmt = prepared.locate_split(
        root, split, SPLITS, "miniImageNet", detect_format, expected_files
    )
    if fmt == "prepared":
        folder = _prepared_root(root)
        assert folder is not None
        images, labels, names = prepared.load_split_arrays(folder, split, IMAGE_SHAPE, verify)
    elif fmt == "metaoptnet":
        path = root / METAOPTNET_FILES[split]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing. {expected_files(root)}")
        images, labels, names = read_metaoptnet_pickle(path)
    elif fmt == "learn2learn":
        images, labels, names = read_l2l_miniimagenet(l2l_mini_file(root, split))
    else:
        folder = _csv_split(root, split, cache_dir)
        images, labels, names = prepared.load_split_arrays(folder, split, IMAGE_SHAPE, verify)
    prepared.check_arrays(images, labels, names, IMAGE_SHAPE, f"{root} ({fmt}) split {split!r}")
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
    """Split ``split`` of miniImageNet from any accepted layout under ``root``.

    Args:
        root: data folder (see module docstring); ``None`` means ``$METASPARSE_DATA/miniimagenet``.
        split: train, val or test.
        augment: MetaOptNet training augmentation (else plain normalisation).
        image_size: output side length (default 84).
        cache_dir: where decoded JPEGs are cached (default ``$METASPARSE_CACHE``).
        verify: re-hash prepared files against the manifest's sha256.
    """
    return prepared.build_array_split(
        NAME, load_split_arrays, root, split, augment, image_size, cache_dir, verify, options
    )


def convert(src: Path, dst: Path, to: str = "metaoptnet", cache_dir: Path | None = None) -> Path:
    """Convert every split under ``src`` (any accepted layout) to ``to`` in ``dst``.

    ``to="metaoptnet"`` writes MetaOptNet's three pickles (global labels 0..99, ``catname2label``
    by wnid); ``to="prepared"`` writes our memory-mapped format. Splits must be disjoint.
    """
    if to not in ("metaoptnet", "prepared"):
        raise ValueError(f"unknown target format {to!r}; choose metaoptnet or prepared")
    splits = {}
    for split in SPLITS:
        try:
            images, labels, names, _ = load_split_arrays(Path(src), split, cache_dir)
        except FileNotFoundError:
            continue
        splits[split] = (images, labels, names)
    if not splits:
        raise FileNotFoundError(f"nothing to convert. {expected_files(Path(src))}")
    prepared.check_disjoint({s: v[2] for s, v in splits.items()})
    dst = Path(dst)
    if to == "prepared":
        return prepared.write_prepared(dst, NAME, splits, source=f"converted from {src}")
    offset = 0
    for split, (images, labels, names) in splits.items():
        catname2label = {n: offset + i for i, n in enumerate(names)}
        safe_pickle.dump(
            {
                "data": np.ascontiguousarray(images),
                "labels": [int(offset + v) for v in labels],
                "catname2label": catname2label,
            },
            dst / METAOPTNET_FILES[split],
        )
        offset += len(names)
    return dst
