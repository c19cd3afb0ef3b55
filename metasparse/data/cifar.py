"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): 32×32 splits of CIFAR-100.

Both benchmarks use all 600 images (train + test of the archive) of each CIFAR-100 class;
CIFAR-FS splits the 100 fine classes 64/16/20, FC100 splits the 20 superclasses 12/4/4 (60/20/20
classes). Accepted layouts under the data root (auto-detected, first match wins):

- ``prepared``: our memory-mapped format, as written by :func:`prepare` /
  ``metasparse data prepare cifar-fs|fc100 --cifar100 DIR --out DIR`` (in ``root`` or
  ``root/<benchmark>``);
- ``metaoptnet``: ``CIFAR_FS_{train,val,test}.pickle`` / ``FC100_{train,val,test}.pickle``
  (dicts with ``data`` uint8 N×32×32×3 and ``labels``; Python 2 pickles; learn2learn's FC100 too);
- ``learn2learn`` (CIFAR-FS only): PNG folders ``cifarfs/processed/{train,val,test}/<class>/``;
- ``cifar100``: the official ``cifar-100-python/{train,test,meta}`` folder or
  ``cifar-100-python.tar.gz``, prepared on first use into ``$METASPARSE_CACHE``.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from metasparse.data import prepared, safe_pickle, splits_catalog
from metasparse.data.base import FewShotDataset
from metasparse.data.learn2learn_cache import decode_image, l2l_cifarfs_folder, list_image_folder
from metasparse.data.miniimagenet import read_metaoptnet_pickle
from metasparse.data.registry import SPLITS

IMAGE_SHAPE = (32, 32, 3)
BENCHMARKS = ("cifar-fs", "fc100")
CLASS_COUNTS = {
    "cifar-fs": {"train": 64, "val": 16, "test": 20},
    "fc100": {"train": 60, "val": 20, "test": 20},
}
_PICKLE_PREFIX = {"cifar-fs": "CIFAR_FS", "fc100": "FC100"}
_CIFAR_FILES = ("train", "test", "meta")


def expected_files(benchmark: str, root: Path | None) -> str:
    """The files each accepted layout needs, for error messages."""
    prefix = _PICKLE_PREFIX[benchmark]
    text = (
        f"{benchmark} expects under {root} one of: (prepared) manifest.json + "
        f"{{split}}_images.npy/{{split}}_labels.npy from `metasparse data prepare {benchmark} "
        f"--cifar100 DIR --out DIR`; (metaoptnet) {prefix}_{{train,val,test}}.pickle; "
    )
    if benchmark == "cifar-fs":
        text += "(learn2learn) cifarfs/processed/{train,val,test}/<class>/*.png; "
    return text + "(cifar100) cifar-100-python/{train,test,meta} or cifar-100-python.tar.gz"


def split_classes(benchmark: str, split: str) -> list[str]:
    """Fine class names of ``split`` of ``benchmark`` (published split), sorted."""
    if benchmark == "cifar-fs":
        return splits_catalog.cifar_fs_classes(split)
    if benchmark == "fc100":
        return splits_catalog.fc100_classes(split)
    raise ValueError(f"unknown CIFAR benchmark {benchmark!r}; choose cifar-fs or fc100")


# ---------------------------------------------------------------- the official CIFAR-100 archive


def _find_cifar100(path: Path) -> Path | None:
    """The ``cifar-100-python`` folder or ``.tar.gz`` at or under ``path``."""
    path = Path(path)
    candidates = [path, path / "cifar-100-python", path / "cifar-100-python.tar.gz"]
    for cand in candidates:
        if cand.is_dir() and all((cand / f).is_file() for f in _CIFAR_FILES):
            return cand
        if cand.is_file() and cand.name.endswith((".tar.gz", ".tgz", ".tar")):
            return cand
    return None


def _read_cifar100_files(source: Path) -> dict[str, Any]:
    """Unpickle ``train``, ``test`` and ``meta`` from the folder or (without extracting) the tar."""
    out: dict[str, Any] = {}
    if source.is_dir():
        for name in _CIFAR_FILES:
            out[name] = safe_pickle.load(source / name)
        return out
    try:
        with tarfile.open(source) as tar:
            for member in tar.getmembers():
                base = os.path.basename(member.name)
                if member.isfile() and base in _CIFAR_FILES:
                    fh = tar.extractfile(member)
                    assert fh is not None
                    out[base] = safe_pickle.loads(fh.read(), f"{source}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ValueError(f"{source} is truncated or corrupt ({exc}); download it again") from exc
    missing = [n for n in _CIFAR_FILES if n not in out]
    if missing:
        raise ValueError(f"{source} lacks cifar-100-python/{', '.join(missing)}; is it CIFAR-100?")
    return out


def read_cifar100(source: Path) -> tuple[np.ndarray, np.ndarray]:
    """All 60,000 CIFAR-100 images (N×32×32×3 uint8, train then test) and their fine labels.

    Raises:
        ValueError: the archive is not the official CIFAR-100 (class names, shapes, lengths).
    """
    found = _find_cifar100(Path(source))
    if found is None:
        raise FileNotFoundError(
            f"no CIFAR-100 under {source}: expected cifar-100-python/{{train,test,meta}} or "
            "cifar-100-python.tar.gz (get it with `metasparse data download cifar100 --to DIR`)"
        )
    files = _read_cifar100_files(found)
    meta = files["meta"]
    fine = [str(n) for n in meta.get("fine_label_names", [])]
    if fine != splits_catalog.cifar100_fine_classes():
        raise ValueError(
            f"{found}: meta fine_label_names are not CIFAR-100's 100 classes in order; this is not "
            "the official cifar-100-python archive: get it with `metasparse data download "
            "cifar100 --to DIR`"
        )
    coarse = [str(n) for n in meta.get("coarse_label_names", [])]
    if coarse and coarse != splits_catalog.cifar100_coarse_classes():
        raise ValueError(f"{found}: meta coarse_label_names are not CIFAR-100's 20 superclasses")
    images, labels = [], []
    for part in ("train", "test"):
        d = files[part]
        if not isinstance(d, dict) or "data" not in d or "fine_labels" not in d:
            raise ValueError(f"{found}: {part} lacks the keys data and fine_labels")
        data = np.asarray(d["data"])
        lab = np.asarray(d["fine_labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(
                f"{found}: {part} data has shape {data.shape} and dtype {data.dtype}; expected "
                "uint8 N×3072 (32×32 RGB, channel-major)"
            )
        if len(data) != len(lab):
            raise ValueError(
                f"{found}: {part} has {len(data)} images but {len(lab)} fine_labels "
                "(label/data length mismatch); the archive is damaged: download it again with "
                "`metasparse data download cifar100 --to DIR`"
            )
        if len(lab) and (lab.min() < 0 or lab.max() > 99):
            raise ValueError(f"{found}: {part} fine_labels outside 0..99")
        if "coarse_labels" in d:
            _check_coarse(np.asarray(d["coarse_labels"], dtype=np.int64), lab, found, part)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _check_coarse(coarse: np.ndarray, fine: np.ndarray, source: Path, part: str) -> None:
    if len(coarse) != len(fine):
        raise ValueError(f"{source}: {part} coarse_labels and fine_labels differ in length")
    fine_names = splits_catalog.cifar100_fine_classes()
    coarse_names = splits_catalog.cifar100_coarse_classes()
    owner = {
        f: coarse_names.index(c)
        for c, fs in splits_catalog.CIFAR100_SUPERCLASSES.items()
        for f in fs
    }
    expected = np.asarray([owner[fine_names[i]] for i in range(100)])
    if len(fine) and (expected[fine] != coarse).any():
        raise ValueError(f"{source}: {part} coarse_labels disagree with CIFAR-100's superclasses")


def prepare(
    benchmark: str,
    cifar100: Path,
    out: Path,
    images_labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Build ``benchmark`` (cifar-fs or fc100) from the CIFAR-100 archive into ``out/<benchmark>``.

    Returns the prepared folder (memory-mapped ``.npy`` per split, ``manifest.json`` with sha256).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown CIFAR benchmark {benchmark!r}; choose cifar-fs or fc100")
    images, fine = images_labels if images_labels is not None else read_cifar100(Path(cifar100))
    fine_names = splits_catalog.cifar100_fine_classes()
    splits = {}
    for split in SPLITS:
        names = split_classes(benchmark, split)
        index = np.full(100, -1, dtype=np.int64)
        index[[fine_names.index(n) for n in names]] = np.arange(len(names))
        keep = np.flatnonzero(index[fine] >= 0)
        missing = sorted(set(names) - {fine_names[i] for i in np.unique(fine[keep])})
        if missing:
            raise ValueError(
                f"CIFAR-100 at {cifar100} has no images of {len(missing)} {benchmark} {split} "
                f"class(es) ({', '.join(missing[:5])}); the archive is incomplete"
            )
        splits[split] = (images[keep], index[fine[keep]], names)
    target = Path(out) / benchmark
    return prepared.write_prepared(target, benchmark, splits, source=f"CIFAR-100 at {cifar100}")


# ---------------------------------------------------------------------------------- builders


def _prepared_root(benchmark: str, root: Path) -> Path | None:
    for cand in (root, root / benchmark):
        if prepared.is_prepared(cand, benchmark):
            return cand
    return None


def _pickle_path(benchmark: str, root: Path, split: str) -> Path | None:
    name = f"{_PICKLE_PREFIX[benchmark]}_{split}.pickle"
    for cand in (root / name, root / _PICKLE_PREFIX[benchmark] / name, root / benchmark / name):
        if cand.is_file():
            return cand
    return None


def detect_format(benchmark: str, root: Path | None, split: str | None = None) -> str | None:
    """Which accepted layout of ``benchmark`` is under ``root``, or ``None``."""
    if root is None or not Path(root).is_dir():
        return None
    root = Path(root)
    splits = [split] if split else list(SPLITS)
    if _prepared_root(benchmark, root) is not None:
        return "prepared"
    if any(_pickle_path(benchmark, root, s) for s in splits):
        return "metaoptnet"
    if benchmark == "cifar-fs" and l2l_cifarfs_folder(root) is not None:
        return "learn2learn"
    if _find_cifar100(root) is not None:
        return "cifar100"
    return None


def _name_pickle_classes(names: list[str]) -> list[str]:
    """MetaOptNet's CIFAR pickles label by CIFAR-100 fine index: name classes accordingly."""
    fine = splits_catalog.cifar100_fine_classes()
    out = []
    for n in names:
        idx = int(n.removeprefix("class_")) if n.startswith("class_") else None
        out.append(fine[idx] if idx is not None and 0 <= idx < 100 else n)
    return out


def load_split_arrays(
    benchmark: str,
    root: Path,
    split: str,
    cache_dir: Path | None = None,
    verify: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Read one split in whichever layout is under ``root``: (images, labels, names, format)."""
    root, fmt = prepared.locate_split(
        root,
        split,
        SPLITS,
        benchmark,
        lambda r, s: detect_format(benchmark, r, s),
        lambda r: expected_files(benchmark, r),
    )
    if fmt == "prepared":
        folder = _prepared_root(benchmark, root)
        assert folder is not None
        images, labels, names = prepared.load_split_arrays(folder, split, IMAGE_SHAPE, verify)
    elif fmt == "metaoptnet":
        path = _pickle_path(benchmark, root, split)
        if path is None:
            raise FileNotFoundError(
                f"{_PICKLE_PREFIX[benchmark]}_{split}.pickle is missing in {root}. "
                + expected_files(benchmark, root)
            )
        images, labels, names = read_metaoptnet_pickle(path)
        names = _name_pickle_classes(names)
    elif fmt == "learn2learn":
        folder = l2l_cifarfs_folder(root)
        assert folder is not None
        other = {s: sorted(d.name for d in (folder / s).iterdir() if d.is_dir()) for s in SPLITS}
        prepared.check_disjoint(other)
        files, labels, names = list_image_folder(folder / split)
        key = prepared.source_key(folder / split, *sorted({f.parent for f in files}))
        cached = prepared.cached_decode(
            key,
            benchmark,
            split,
            len(files),
            IMAGE_SHAPE,
            lambda i: decode_image(files[i].read_bytes(), str(files[i]), (32, 32)),
            labels,
            names,
            source=f"learn2learn folders {folder}",
            cache_dir=cache_dir,
        )
        images, labels, names = prepared.load_split_arrays(cached, split, IMAGE_SHAPE, verify)
    else:
        source = _find_cifar100(root)
        assert source is not None
        base = Path(cache_dir) if cache_dir is not None else prepared.cache_root()
        target = base / f"cifar100-{prepared.source_key(source)}"
        if not prepared.is_prepared(target / benchmark, benchmark):
            prepare(benchmark, source, target)
        images, labels, names = prepared.load_split_arrays(
            target / benchmark, split, IMAGE_SHAPE, verify
        )
    prepared.check_arrays(images, labels, names, IMAGE_SHAPE, f"{root} ({fmt}) split {split!r}")
    return images, labels, names, fmt


def _build(
    benchmark: str,
    root: Path | None,
    split: str,
    augment: bool,
    image_size: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
    **options: Any,
) -> FewShotDataset:
    def load(root: Path, split: str, cache: Path | None, verify: bool) -> Any:
        return load_split_arrays(benchmark, root, split, cache, verify)

    return prepared.build_array_split(
        benchmark, load, root, split, augment, image_size, cache_dir, verify, options
    )


def build_cifar_fs(root: Path | None, split: str, augment: bool, **options: Any) -> FewShotDataset:
    """Split ``split`` of CIFAR-FS (64/16/20 classes) from any accepted layout under ``root``.

    Options: ``image_size`` (default 32), ``cache_dir``, ``verify`` (re-hash prepared files).
    """
    return _build("cifar-fs", root, split, augment, **options)


def build_fc100(root: Path | None, split: str, augment: bool, **options: Any) -> FewShotDataset:
    """Split ``split`` of FC100 (60/20/20 classes) from any accepted layout under ``root``.

    Options: ``image_size`` (default 32), ``cache_dir``, ``verify`` (re-hash prepared files).
    """
    return _build("fc100", root, split, augment, **options)
