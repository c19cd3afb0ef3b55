"""The compact on-disk format every benchmark is converted to: memory-mapped ``.npy`` + manifest.

A prepared folder holds, per split, ``{split}_images.npy`` (uint8, N×H×W×C, read with
``mmap_mode="r"`` so nothing is loaded until used) and ``{split}_labels.npy`` (int64, N), plus
``manifest.json``::

    {"format": "metasparse-fewshot", "version": 1, "benchmark": "cifar-fs", "source": "...",
     "splits": {"train": {"images": "train_images.npy", "labels": "train_labels.npy",
                          "shape": [N, H, W, C], "class_names": [...],
                          "files": {"train_images.npy": {"bytes": B, "sha256": "..."}, ...}}}}

The manifest is written last, atomically, so a folder with a manifest is complete. Loading checks
file sizes (catches truncation at once); :func:`verify_checksums` re-hashes every byte. The same
format is the decode cache for JPEG/PNG sources (``$METASPARSE_CACHE``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from metasparse.data.base import ArrayDataset, Transform
from metasparse.utils import atomic_write_json

FORMAT = "metasparse-fewshot"
VERSION = 1
MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where decoded arrays are cached: ``$METASPARSE_CACHE`` or ``~/.cache/metasparse``."""
    return Path(os.environ.get("METASPARSE_CACHE", Path.home() / ".cache" / "metasparse"))


def source_key(*paths: Path) -> str:
    """A short key naming the source files by absolute path, size and mtime (for cache folders)."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_disjoint(classes_by_split: dict[str, Iterable[str]]) -> None:
    """Raise ``ValueError`` if two splits share a class (training would leak into testing)."""
    seen: dict[str, str] = {}
    for split, names in classes_by_split.items():
        for name in names:
            if name in seen and seen[name] != split:
                shared = sorted(set(classes_by_split[seen[name]]) & set(classes_by_split[split]))
                raise ValueError(
                    f"splits {seen[name]!r} and {split!r} share {len(shared)} class(es) "
                    f"({', '.join(shared[:5])}{'…' if len(shared) > 5 else ''}); the class sets "
                    "of train/val/test must be disjoint — check the split files"
                )
            seen[name] = split


def check_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    image_shape: tuple[int, ...] | None,
    source: str,
) -> None:
    """Validate one split's arrays: dtype, image shape, label count and range."""
    if images.dtype != np.uint8:
        raise ValueError(f"{source}: images must be uint8, got {images.dtype}")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{source}: images have shape {tuple(images.shape[1:])}, expected {tuple(image_shape)} "
            "(H, W, C); the file belongs to another benchmark or was resized"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"{source}: {len(images)} images but {len(labels)} labels; the file is damaged or "
            "the label file belongs to another split"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"{source}: labels range over [{labels.min()}, {labels.max()}] but there are "
            f"{len(class_names)} classes"
        )


def _file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_split_files(
    out: Path,
    split: str,
    num_images: int,
    image_shape: tuple[int, ...],
    fill: Callable[[np.ndarray], None],
    labels: np.ndarray,
    class_names: list[str],
) -> dict[str, Any]:
    """Write one split's ``.npy`` files; ``fill(images)`` writes into a (N, *image_shape) memmap.

    Returns the split's manifest entry. Files go through a temporary name and a rename.
    """
    out.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != num_images:
        raise ValueError(f"split {split!r}: {num_images} images but {len(labels)} labels")
    img_name, lab_name = f"{split}_images.npy", f"{split}_labels.npy"
    tmp = out / f".{img_name}.tmp"
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(num_images, *image_shape))
    try:
        fill(mm)
        mm.flush()
    except BaseException:
        del mm
        tmp.unlink(missing_ok=True)
        raise
    del mm
    os.replace(tmp, out / img_name)
    tmp_lab = out / f".{lab_name}.tmp"
    with open(tmp_lab, "wb") as fh:
        np.save(fh, labels)
    os.replace(tmp_lab, out / lab_name)
    return {
        "images": img_name,
        "labels": lab_name,
        "shape": [num_images, *image_shape],
        "class_names": list(class_names),
        "files": {img_name: _file_entry(out / img_name), lab_name: _file_entry(out / lab_name)},
    }


def write_prepared(
    out: Path,
    benchmark: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
    source: str = "",
) -> Path:
    """Write in-memory splits ``{split: (images, labels, class_names)}`` as a prepared folder."""
    out = Path(out)
    check_disjoint({s: names for s, (_, _, names) in splits.items()})
    entries = {}
    for split, (images, labels, names) in splits.items():
        labels = np.asarray(labels, dtype=np.int64)
        check_arrays(images, labels, names, None, f"split {split!r}")

        def fill(mm: np.ndarray, images: np.ndarray = images) -> None:
            mm[...] = images

        entries[split] = write_split_files(
            out, split, len(images), tuple(images.shape[1:]), fill, labels, names
        )
    write_manifest(out, benchmark, entries, source)
    return out


def write_manifest(out: Path, benchmark: str, entries: dict[str, Any], source: str) -> None:
    """Write ``manifest.json`` last: its presence marks the folder complete."""
    atomic_write_json(
        Path(out) / MANIFEST,
        {
            "format": FORMAT,
            "version": VERSION,
            "benchmark": benchmark,
            "source": source,
            "splits": entries,
        },
    )


def read_manifest(root: Path) -> dict[str, Any]:
    """Read and validate ``root/manifest.json``."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {root}: not a prepared dataset folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is corrupt ({exc}); prepare the dataset again") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} v{VERSION} manifest (format={manifest.get('format')!r}, "
            f"version={manifest.get('version')!r}); prepare the dataset again"
        )
    return manifest


def is_prepared(root: Path, benchmark: str | None = None) -> bool:
    """Whether ``root`` holds a prepared folder (of ``benchmark`` when given)."""
    try:
        manifest = read_manifest(root)
    except (FileNotFoundError, ValueError):
        return False
    return benchmark is None or manifest.get("benchmark") == benchmark


def locate_split(
    root: Path | str,
    split: str,
    splits: Iterable[str],
    dataset: str,
    detect: Callable[[Path, str], str | None],
    expected: Callable[[Path], str],
) -> tuple[Path, str]:
    """The opening every benchmark's ``load_split_arrays`` shares: ``split`` is one of
    ``splits``, ``root`` is a folder, and ``detect(root, split)`` finds a layout holding the
    split; each error names what is expected there (``expected(root)``). Returns
    ``(root, format)``."""
    splits = tuple(splits)
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(splits)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist. {expected(root)}")
    fmt = detect(root, split)
    if fmt is None:
        raise FileNotFoundError(f"no {dataset} {split!r} split found. {expected(root)}")
    return root, fmt


def load_split_arrays(
    root: Path, split: str, image_shape: tuple[int, ...] | None = None, verify: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Memory-map one split of a prepared folder: (images, labels, class_names), all validated.

    Sizes are always checked against the manifest; ``verify=True`` also re-hashes the bytes.
    """
    root = Path(root)
    manifest = read_manifest(root)
    splits = manifest["splits"]
    if split not in splits:
        raise FileNotFoundError(
            f"{root} has no {split!r} split (it has {', '.join(splits) or 'none'}); prepare it"
        )
    check_disjoint({s: e["class_names"] for s, e in splits.items()})
    entry = splits[split]
    for name, info in entry["files"].items():
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; prepare the dataset again")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise ValueError(
                f"{path} has {size} bytes but the manifest records {info['bytes']}: the file is "
                "truncated or was modified; prepare the dataset again"
            )
        if verify and sha256_file(path) != info["sha256"]:
            raise ValueError(f"{path} fails its sha256 checksum; prepare the dataset again")
    try:
        images = np.load(root / entry["images"], mmap_mode="c")  # writable view, file untouched
        labels = np.load(root / entry["labels"])
    except (ValueError, OSError) as exc:
        raise ValueError(f"{root}: split {split!r} is corrupt ({exc}); prepare it again") from exc
    if list(images.shape) != list(entry["shape"]):
        raise ValueError(
            f"{root / entry['images']} has shape {images.shape}, manifest says {entry['shape']}"
        )
    names = list(entry["class_names"])
    check_arrays(images, labels, names, image_shape, f"{root} split {split!r}")
    return images, labels, names


def verify_checksums(root: Path) -> list[str]:
    """Re-hash every file listed in the manifest; return one message per mismatch."""
    root = Path(root)
    problems = []
    for split, entry in read_manifest(root)["splits"].items():
        for name, info in entry["files"].items():
            path = root / name
            if not path.is_file():
                problems.append(f"{split}: {path} is missing")
            elif sha256_file(path) != info["sha256"]:
                problems.append(f"{split}: {path} fails its sha256 checksum")
    return problems


def load_prepared(
    root: Path,
    split: str,
    transform: Transform | None = None,
    image_shape: tuple[int, ...] | None = None,
    verify: bool = False,
) -> ArrayDataset:
    """One split of a prepared folder as a memory-mapped :class:`ArrayDataset`."""
    images, labels, names = load_split_arrays(root, split, image_shape, verify)
    return ArrayDataset(images, labels, names, transform)


def cached_decode(
    key: str,
    benchmark: str,
    split: str,
    num_images: int,
    image_shape: tuple[int, ...],
    decode: Callable[[int], np.ndarray],
    labels: np.ndarray,
    class_names: list[str],
    source: str,
    cache_dir: Path | None = None,
) -> Path:
    """Decode ``num_images`` images once into the cache (prepared format); return its folder.

    ``decode(i)`` returns image i as uint8 (H, W, C). A later call with the same ``key`` returns
    at once. The folder is built under a temporary name and renamed, so it is never half-written.
    """
    base = Path(cache_dir) if cache_dir is not None else cache_root()
    folder = base / f"{benchmark}-{split}-{key}"
    if is_prepared(folder):
        return folder
    tmp = base / f".{folder.name}.{os.getpid()}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)

    def fill(mm: np.ndarray) -> None:
        for i in range(num_images):
            mm[i] = decode(i)

    try:
        entry = write_split_files(tmp, split, num_images, image_shape, fill, labels, class_names)
        write_manifest(tmp, benchmark, {split: entry}, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_prepared(folder):
            raise
    return folder


def default_root(root: Path | None, name: str) -> Path:
    """``root``, or ``$METASPARSE_DATA/<name>`` when no root was configured."""
    if root is not None:
        return Path(root)
    base = os.environ.get("METASPARSE_DATA")
    if base:
        return Path(base) / name
    raise FileNotFoundError(
        f"no data root for {name}: set data.root in the config or the METASPARSE_DATA environment "
        f"variable (the folder holding {name}/)"
    )


def build_array_split(
    benchmark: str,
    load: Callable[[Path, str, Path | None, bool], tuple[np.ndarray, np.ndarray, list[str], str]],
    root: Path | None,
    split: str,
    augment: bool,
    image_size: int | None,
    cache_dir: str | os.PathLike[str] | None,
    verify: bool,
    options: dict[str, Any],
) -> ArrayDataset:
    """The shared tail of the benchmark builders: check options, load arrays, add the transform."""
    from metasparse.data.transforms import build_transform

    if options:
        raise ValueError(
            f"unknown {benchmark} option(s) {sorted(options)}; accepted: image_size, cache_dir, "
            "verify"
        )
    cache = Path(cache_dir) if cache_dir is not None else None
    images, labels, names, _ = load(default_root(root, benchmark), split, cache, verify)
    return ArrayDataset(images, labels, names, build_transform(benchmark, augment, image_size))
