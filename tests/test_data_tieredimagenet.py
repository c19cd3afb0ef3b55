"""tieredImageNet: MetaOptNet/learn2learn PNG pickles written by the test, cache and errors."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metasparse.data import build_dataset, tieredimagenet

SPLIT_CLASSES = {"train": 3, "val": 2, "test": 2}


def _png(arr: np.ndarray) -> np.ndarray:
    """PNG bytes as the uint8 array ``cv2.imencode`` returns (how the original files hold them)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(-1, 1)


def write_tiered(root: Path, per_class: int = 2, size: int = 84, as_bytes: bool = False) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    truth = {}
    offset = 0
    for split, k in SPLIT_CLASSES.items():
        labels = np.repeat(np.arange(k), per_class)
        imgs = rng.integers(0, 256, size=(len(labels), size, size, 3), dtype=np.uint8)
        pngs = [_png(a) for a in imgs]
        if as_bytes:
            pngs = [p.tobytes() for p in pngs]
        names = [f"n{offset + i:08d}" for i in range(k)]
        offset += k
        lab = {
            "label_specific": labels,
            "label_general": np.zeros_like(labels),
            "label_specific_str": names,
            "label_general_str": ["n00000001"],
        }
        (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps(pngs, protocol=2))
        (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(lab, protocol=2))
        truth[split] = (imgs, labels, names)
    return truth


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("METASPARSE_CACHE", str(path))
    return path


@pytest.mark.parametrize("as_bytes", [False, True])
def test_png_pickles(tmp_path, cache, as_bytes):
    truth = write_tiered(tmp_path / "t", as_bytes=as_bytes)
    assert tieredimagenet.detect_format(tmp_path / "t") == "metaoptnet"
    for split, (imgs, labels, names) in truth.items():
        ds = build_dataset("tieredimagenet", split, root=tmp_path / "t", augment=split == "train")
        assert ds.class_names == names
        assert np.array_equal(np.asarray(ds.images), imgs)  # PNG is lossless
        assert np.array_equal(ds.labels, labels)
        assert tuple(ds[0][0].shape) == (3, 84, 84)
    assert len(list(cache.glob("tieredimagenet-*"))) == 3
    again = build_dataset("tieredimagenet", "val", root=tmp_path / "t")  # from the cache
    assert isinstance(again.images, np.memmap)


def test_errors(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match=r"images_png\.pkl"):
        build_dataset("tieredimagenet", "test", root=tmp_path)
    write_tiered(tmp_path / "a")
    lab = pickle.loads((tmp_path / "a" / "test_labels.pkl").read_bytes())
    lab["label_specific"] = lab["label_specific"][:-1]
    (tmp_path / "a" / "test_labels.pkl").write_bytes(pickle.dumps(lab, protocol=2))
    with pytest.raises(ValueError, match="label/data length mismatch"):
        build_dataset("tieredimagenet", "test", root=tmp_path / "a")

    write_tiered(tmp_path / "b", size=64)
    with pytest.raises(ValueError, match="64×64 pixels, expected 84×84"):
        build_dataset("tieredimagenet", "val", root=tmp_path / "b")

    write_tiered(tmp_path / "c")
    pngs = pickle.loads((tmp_path / "c" / "val_images_png.pkl").read_bytes())
    pngs[1] = pngs[1][:40]
    (tmp_path / "c" / "val_images_png.pkl").write_bytes(pickle.dumps(pngs, protocol=2))
    with pytest.raises(ValueError, match=r"val_images_png.pkl\[1\] is truncated or corrupt"):
        build_dataset("tieredimagenet", "val", root=tmp_path / "c")

    write_tiered(tmp_path / "d")
    lab = pickle.loads((tmp_path / "d" / "test_labels.pkl").read_bytes())
    lab["label_specific_str"] = ["n00000000", "n00000099"]  # n00000000 is a train class
    (tmp_path / "d" / "test_labels.pkl").write_bytes(pickle.dumps(lab, protocol=2))
    with pytest.raises(ValueError, match="share 1 class"):
        build_dataset("tieredimagenet", "train", root=tmp_path / "d")
