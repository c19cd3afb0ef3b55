"""miniImageNet: every layout on tiny files the tests write, and on the real data when present."""

from __future__ import annotations

import csv
import io
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metasparse.cli import main
from metasparse.data import build_dataset, miniimagenet, prepared
from metasparse.data import splits_catalog as cat

TINY = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
PER_CLASS = 3


def _jpeg(seed: int, size: int = 84) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_ravi(root: Path, layout: str = "zip", classes=TINY) -> dict[str, bytes]:
    """Ravi csvs + JPEGs as ``images/`` (layout 'dir'), ``images.zip`` or ``images_{split}.zip``."""
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    seed = 0
    for split, wnids in classes.items():
        rows = []
        for w in wnids:
            for k in range(PER_CLASS):
                name = f"{w}{k:08d}.jpg"
                files[name] = _jpeg(seed)
                seed += 1
                rows.append((name, w))
        with open(root / f"{split}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("filename", "label"), *rows])
        if layout == "split-zips":
            with zipfile.ZipFile(root / f"images_{split}.zip", "w") as z:
                for name, _ in rows:
                    z.writestr(f"images/{name}", files[name])
    if layout == "dir":
        (root / "images").mkdir()
        for name, data in files.items():
            (root / "images" / name).write_bytes(data)
    elif layout == "zip":
        with zipfile.ZipFile(root / "images.zip", "w") as z:
            for name, data in files.items():
                z.writestr(f"images/{name}", data)
    return files


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("METASPARSE_CACHE", str(path))
    return path


@pytest.mark.parametrize("layout", ["dir", "zip", "split-zips"])
def test_ravi_csv_layouts(tmp_path, cache, layout):
    files = write_ravi(tmp_path / "mini", layout)
    assert miniimagenet.detect_format(tmp_path / "mini") == "csv"
    for split, wnids in TINY.items():
        ds = build_dataset("miniimagenet", split, root=tmp_path / "mini")
        assert ds.class_names == wnids and len(ds) == PER_CLASS * len(wnids)
        first = f"{wnids[0]}{0:08d}.jpg"
        assert np.array_equal(ds.images[0], _decode(files[first]))
        x, y = ds[0]
        assert tuple(x.shape) == (3, 84, 84) and y == 0


def test_decode_cache_makes_second_load_free(tmp_path, cache, monkeypatch):
    write_ravi(tmp_path / "mini", "zip")
    a = build_dataset("miniimagenet", "train", root=tmp_path / "mini")
    assert len(list(cache.glob("miniimagenet-train-*"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(miniimagenet, "decode_image", boom)
    b = build_dataset("miniimagenet", "train", root=tmp_path / "mini")
    assert np.array_equal(a.images, b.images)
    # touching the source invalidates the cache key (size + mtime)
    time.sleep(0.01)
    (tmp_path / "mini" / "train.csv").touch()
    with pytest.raises(AssertionError, match="decoded again"):
        build_dataset("miniimagenet", "train", root=tmp_path / "mini")


def test_metaoptnet_and_learn2learn_layouts(tmp_path, cache):
    write_ravi(tmp_path / "src", "zip")
    out = miniimagenet.convert(tmp_path / "src", tmp_path / "mon", to="metaoptnet")
    assert sorted(p.name for p in out.iterdir()) == sorted(miniimagenet.METAOPTNET_FILES.values())
    # the files are plain Python-2-style pickles that the standard unpickler reads too
    raw = pickle.loads((out / miniimagenet.METAOPTNET_FILES["val"]).read_bytes(), encoding="latin1")
    assert set(raw) == {"data", "labels", "catname2label"} and raw["data"].shape == (6, 84, 84, 3)
    # learn2learn cache written the way learn2learn writes it
    (tmp_path / "l2l").mkdir()
    for split, l2l_name in (("train", "train"), ("val", "validation"), ("test", "test")):
        src = build_dataset("miniimagenet", split, root=tmp_path / "src")
        class_dict = {
            n: np.flatnonzero(src.labels == i).tolist() for i, n in enumerate(src.class_names)
        }
        payload = {"image_data": np.asarray(src.images), "class_dict": class_dict}
        path = tmp_path / "l2l" / f"mini-imagenet-cache-{l2l_name}.pkl"
        path.write_bytes(pickle.dumps(payload, protocol=4))
    for split in TINY:
        ref = build_dataset("miniimagenet", split, root=tmp_path / "src")
        for root, fmt in ((tmp_path / "mon", "metaoptnet"), (tmp_path / "l2l", "learn2learn")):
            assert miniimagenet.detect_format(root) == fmt
            ds = build_dataset("miniimagenet", split, root=root)
            assert ds.class_names == ref.class_names
            assert np.array_equal(np.asarray(ds.images), np.asarray(ref.images))
            assert np.array_equal(ds.labels, ref.labels)


def test_convert_cli_to_prepared(tmp_path, cache, capsys):
    write_ravi(tmp_path / "src", "dir")
    rc = main(
        [
            "data",
            "convert",
            "miniimagenet",
            "--from",
            str(tmp_path / "src"),
            "--to",
            str(tmp_path / "p"),
        ]
    )
    assert rc == 0
    ds = build_dataset("miniimagenet", "test", root=tmp_path / "p", verify=True)
    assert ds.class_names == TINY["test"]
    assert prepared.verify_checksums(tmp_path / "p") == []


# ------------------------------------------------------------------------------- error paths


def test_missing_root_lists_every_layout(tmp_path, cache, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("miniimagenet", "train", root=tmp_path)
    for needle in ("manifest.json", "phase_train.pickle", "mini-imagenet-cache", "images.zip"):
        assert needle in str(err.value)
    monkeypatch.delenv("METASPARSE_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="METASPARSE_DATA"):
        miniimagenet.build(None, "train", False)


def test_corrupt_and_missing_images(tmp_path, cache):
    files = write_ravi(tmp_path / "m", "dir")
    victim = tmp_path / "m" / "images" / sorted(files)[0]
    victim.write_bytes(files[victim.name][:200])
    with pytest.raises(ValueError, match=f"{victim.name} is truncated or corrupt"):
        build_dataset("miniimagenet", "train", root=tmp_path / "m")
    victim.unlink()
    with pytest.raises(
        FileNotFoundError, match=f"image {victim.name} listed in the csv is missing"
    ):
        build_dataset("miniimagenet", "train", root=tmp_path / "m")
    assert not list(cache.iterdir())  # nothing half-written was kept


def test_corrupt_zip(tmp_path, cache):
    write_ravi(tmp_path / "m", "zip")
    blob = (tmp_path / "m" / "images.zip").read_bytes()
    (tmp_path / "m" / "images.zip").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        build_dataset("miniimagenet", "val", root=tmp_path / "m")


def test_wrong_image_size(tmp_path, cache):
    files = write_ravi(tmp_path / "m", "dir")
    name = sorted(files)[-1]
    (tmp_path / "m" / "images" / name).write_bytes(_jpeg(0, size=64))
    split = next(s for s, w in TINY.items() if name[:3] in w)
    with pytest.raises(ValueError, match="64×64 pixels, expected 84×84"):
        build_dataset("miniimagenet", split, root=tmp_path / "m")


def test_overlapping_splits(tmp_path, cache):
    write_ravi(tmp_path / "m", "zip", {**TINY, "test": ["n06", "n01"]})
    with pytest.raises(ValueError, match=r"'train' and 'test' share 1 class\(es\) \(n01\)"):
        build_dataset("miniimagenet", "val", root=tmp_path / "m")


def test_label_data_mismatch_in_pickles(tmp_path, cache):
    (tmp_path / "mon").mkdir()
    payload = {"data": np.zeros((5, 84, 84, 3), np.uint8), "labels": [0, 0, 1, 1]}
    path = tmp_path / "mon" / miniimagenet.METAOPTNET_FILES["test"]
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        build_dataset("miniimagenet", "test", root=tmp_path / "mon")
    payload = {"data": np.zeros((4, 80, 80, 3), np.uint8), "labels": [0, 0, 1, 1]}
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"\(80, 80, 3\), expected \(84, 84, 3\)"):
        build_dataset("miniimagenet", "test", root=tmp_path / "mon")
    path.write_bytes(pickle.dumps(payload, protocol=2)[:-30])
    with pytest.raises(ValueError, match="truncated"):
        build_dataset("miniimagenet", "test", root=tmp_path / "mon")
    (tmp_path / "l2l").mkdir()
    l2l = {"image_data": np.zeros((4, 84, 84, 3), np.uint8), "class_dict": {"a": [0, 1], "b": [2]}}
    (tmp_path / "l2l" / "mini-imagenet-cache-test.pkl").write_bytes(pickle.dumps(l2l))
    with pytest.raises(ValueError, match="1 of 4 images belong to no class"):
        build_dataset("miniimagenet", "test", root=tmp_path / "l2l")


# ------------------------------------------------------------------------------- real data


def _real(shared_data: Path) -> Path:
    root = shared_data / "miniimagenet"
    if not (root / "test.csv").is_file():
        pytest.skip(f"real miniImageNet not found in {root}")
    return root


@pytest.mark.realdata
def test_real_extracted_images_subset(shared_data, tmp_path, cache):
    """csv + extracted images for a few classes, as a user who unzipped a part would have."""
    real = _real(shared_data)
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    with open(real / "test.csv") as fh:
        rows = list(csv.DictReader(fh))
    wnids = cat.miniimagenet_classes("test")[:5]
    keep = [r for r in rows if r["label"] in wnids][::60]  # 10 per class
    with zipfile.ZipFile(real / "images_test.zip") as z:
        for r in keep:
            (root / "images" / r["filename"]).write_bytes(z.read("images/" + r["filename"]))
    with open(root / "test.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(
            [("filename", "label")] + [(r["filename"], r["label"]) for r in keep]
        )
    ds = build_dataset("miniimagenet", "test", root=root)
    assert ds.class_names == wnids and len(ds) == 50
    assert ds.images.shape == (50, 84, 84, 3) and 20 < float(np.mean(ds.images)) < 235


@pytest.mark.realdata
def test_real_test_split_from_zip(shared_data, cache):
    """The full 20-class test split straight from csv + zip (decoded once, ~4 s)."""
    real = _real(shared_data)
    ds = build_dataset("miniimagenet", "test", root=real)
    assert ds.num_classes == 20 and len(ds) == 12000
    assert ds.class_names == cat.miniimagenet_classes("test")
    assert np.bincount(ds.labels).tolist() == [600] * 20


@pytest.mark.slow
@pytest.mark.realdata
def test_real_all_splits_and_metaoptnet_round_trip(shared_data, tmp_path, cache, capsys):
    real = _real(shared_data)
    counts = {"train": (64, 300), "val": (16, 600), "test": (20, 600)}
    ref = {}
    for split, (k, per) in counts.items():
        ds = build_dataset("miniimagenet", split, root=real)
        assert ds.num_classes == k and len(ds) == k * per
        assert ds.class_names == cat.miniimagenet_classes(split)
        ref[split] = ds
    mon = miniimagenet.convert(real, tmp_path / "mon", to="metaoptnet")
    back = miniimagenet.convert(mon, tmp_path / "prep", to="prepared")
    for split, ds in ref.items():
        for root in (mon, back):
            other = build_dataset("miniimagenet", split, root=root)
            assert other.class_names == ds.class_names
            assert np.array_equal(other.labels, ds.labels)
            assert np.array_equal(np.asarray(other.images), np.asarray(ds.images))
    assert main(["data", "check", str(back)]) == 0
    assert "matches the published split" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "mon")
