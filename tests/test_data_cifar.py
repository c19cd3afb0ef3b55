"""CIFAR-FS / FC100: preparation from a tiny archive in the official layout, and every reader."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metasparse.cli import main
from metasparse.data import build_dataset, cifar, prepared
from metasparse.data import splits_catalog as cat
from metasparse.data.cli import add_parser  # noqa: F401  (import check of the CLI module)

PER_CLASS = (2, 1)  # images per class in the archive's train / test parts


def _image(fine: int, k: int) -> np.ndarray:
    """A 32×32×3 image whose pixel (0, 0, 0) names its class and (0, 0, 1) its copy."""
    rng = np.random.default_rng(1000 * fine + k)
    img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    img[0, 0, 0], img[0, 0, 1] = fine, k % 256
    return img


def write_cifar100(folder: Path, per_class=PER_CLASS, mutate=None) -> Path:
    """Write ``folder/cifar-100-python/{train,test,meta}`` as the official archive lays them out."""
    out = folder / "cifar-100-python"
    out.mkdir(parents=True)
    fine_names = cat.cifar100_fine_classes()
    coarse_names = cat.cifar100_coarse_classes()
    owner = {f: c for c, fs in cat.CIFAR100_SUPERCLASSES.items() for f in fs}
    k = 0
    for part, n in zip(("train", "test"), per_class, strict=True):
        imgs, fine, coarse = [], [], []
        for label in range(100):
            for _ in range(n):
                imgs.append(_image(label, k))
                fine.append(label)
                coarse.append(coarse_names.index(owner[fine_names[label]]))
                k += 1
        data = np.stack(imgs).transpose(0, 3, 1, 2).reshape(len(imgs), 3072)
        d = {
            "filenames": [f"img_{i}.png" for i in range(len(imgs))],
            "batch_label": f"{part} batch",
            "fine_labels": fine,
            "coarse_labels": coarse,
            "data": data,
        }
        if mutate is not None:
            mutate(part, d)
        (out / part).write_bytes(pickle.dumps(d, protocol=2))
    meta = {"fine_label_names": fine_names, "coarse_label_names": coarse_names}
    (out / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("METASPARSE_CACHE", str(path))
    return path


@pytest.mark.parametrize("bench", ["cifar-fs", "fc100"])
def test_prepare_builds_published_splits(tmp_path, cache, bench):
    benchmark = bench
    write_cifar100(tmp_path / "raw")
    out = cifar.prepare(benchmark, tmp_path / "raw", tmp_path / "prepared")
    assert out == tmp_path / "prepared" / benchmark
    counts = {"cifar-fs": (64, 16, 20), "fc100": (60, 20, 20)}[benchmark]
    fine_names = cat.cifar100_fine_classes()
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        ds = build_dataset(benchmark, split, root=tmp_path / "prepared")
        assert ds.num_classes == n and len(ds) == 3 * n
        assert ds.class_names == cifar.split_classes(benchmark, split)
        for i in range(len(ds)):
            raw = ds.load_image(i)
            assert raw.shape == (3, 32, 32) and raw.dtype == torch.uint8
            # the pixel that encodes the CIFAR-100 fine label agrees with the class name
            assert fine_names[int(raw[0, 0, 0])] == ds.class_names[ds.labels[i]]
    assert prepared.verify_checksums(out) == []
    assert isinstance(np.load(out / "train_images.npy", mmap_mode="r"), np.memmap)


def test_prepare_from_tar_gz_and_cli(tmp_path, cache, capsys):
    raw = write_cifar100(tmp_path / "raw")
    tgz = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(raw, arcname="cifar-100-python")
    rc = main(["data", "prepare", "both", "--cifar100", str(tgz), "--out", str(tmp_path / "o")])
    assert rc == 0
    for b in ("cifar-fs", "fc100"):
        assert (tmp_path / "o" / b / "manifest.json").is_file()
    a = build_dataset("fc100", "val", root=tmp_path / "o" / "fc100")
    b = build_dataset("fc100", "val", root=tmp_path / "o")  # root/<benchmark> is found too
    assert np.array_equal(a.images, b.images)
    rc = main(["data", "check", str(tmp_path / "o" / "cifar-fs")])
    text = capsys.readouterr().out
    assert rc == 0 and "cifar-fs (prepared layout)" in text and "no problems found" in text


def test_builder_prepares_raw_archive_into_cache(tmp_path, cache):
    write_cifar100(tmp_path)
    ds = build_dataset("cifar-fs", "test", root=tmp_path, augment=True)
    assert ds.num_classes == 20
    x, _ = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert any(p.name.startswith("cifar100-") for p in cache.iterdir())


def _write_metaoptnet_pickles(tmp_path: Path, prefix: str, benchmark: str) -> Path:
    fine_names = cat.cifar100_fine_classes()
    for split in ("train", "val", "test"):
        labels = [
            fine_names.index(n) for n in cifar.split_classes(benchmark, split) for _ in range(2)
        ]
        data = np.stack([_image(lab, i) for i, lab in enumerate(labels)])
        payload = {"data": data, "labels": labels}
        (tmp_path / f"{prefix}_{split}.pickle").write_bytes(pickle.dumps(payload, protocol=2))
    return tmp_path


@pytest.mark.parametrize(("bench", "prefix"), [("cifar-fs", "CIFAR_FS"), ("fc100", "FC100")])
def test_metaoptnet_pickles(tmp_path, cache, bench, prefix):
    benchmark = bench
    root = _write_metaoptnet_pickles(tmp_path, prefix, benchmark)
    assert cifar.detect_format(benchmark, root) == "metaoptnet"
    ds = build_dataset(benchmark, "test", root=root)
    assert ds.num_classes == 20 and len(ds) == 40
    assert ds.class_names == cifar.split_classes(benchmark, "test")
    fine_names = cat.cifar100_fine_classes()
    assert all(
        fine_names[int(ds.load_image(i)[0, 0, 0])] == ds.class_names[ds.labels[i]]
        for i in range(len(ds))
    )


def test_learn2learn_cifarfs_folders(tmp_path, cache):
    base = tmp_path / "cifarfs" / "processed"
    for split in ("train", "val", "test"):
        for name in cifar.split_classes("cifar-fs", split)[:3]:
            (base / split / name).mkdir(parents=True)
            for k in range(2):
                Image.fromarray(_image(k, k)).save(base / split / name / f"{k}.png")
    assert cifar.detect_format("cifar-fs", tmp_path) == "learn2learn"
    ds = build_dataset("cifar-fs", "val", root=tmp_path)
    assert ds.num_classes == 3 and len(ds) == 6
    assert np.array_equal(ds.images[1], _image(1, 1))  # PNG is lossless


# ------------------------------------------------------------------------------- error paths


def test_missing_data_names_expected_files(tmp_path, cache):
    with pytest.raises(FileNotFoundError, match=r"CIFAR_FS_\{train,val,test\}\.pickle"):
        build_dataset("cifar-fs", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        cifar.read_cifar100(tmp_path)


def test_truncated_archive_file(tmp_path, cache):
    raw = write_cifar100(tmp_path)
    blob = (raw / "train").read_bytes()
    (raw / "train").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        cifar.prepare("cifar-fs", tmp_path, tmp_path / "out")


def test_wrong_image_shape_and_length_mismatch(tmp_path, cache):
    def bad_shape(part, d):
        d["data"] = d["data"][:, :1000]

    write_cifar100(tmp_path / "a", mutate=bad_shape)
    with pytest.raises(ValueError, match="N×3072"):
        cifar.read_cifar100(tmp_path / "a")

    def short_labels(part, d):
        d["fine_labels"] = d["fine_labels"][:-1]
        d.pop("coarse_labels")

    write_cifar100(tmp_path / "b", mutate=short_labels)
    with pytest.raises(ValueError, match="length mismatch"):
        cifar.read_cifar100(tmp_path / "b")

    (tmp_path / "c").mkdir()
    payload = {"data": np.zeros((4, 28, 28, 3), np.uint8), "labels": [0, 0, 1, 1]}
    (tmp_path / "c" / "FC100_train.pickle").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"\(28, 28, 3\), expected \(32, 32, 3\)"):
        build_dataset("fc100", "train", root=tmp_path / "c")


def test_not_the_official_archive(tmp_path, cache):
    raw = write_cifar100(tmp_path)
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []}
    (raw / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    with pytest.raises(ValueError, match="not the official"):
        cifar.read_cifar100(tmp_path)


def test_prepared_truncation_overlap_and_checksum(tmp_path, cache):
    write_cifar100(tmp_path / "raw")
    out = cifar.prepare("cifar-fs", tmp_path / "raw", tmp_path / "p")
    # a flipped byte: sizes agree, so only verification catches it
    path = out / "val_images.npy"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    build_dataset("cifar-fs", "val", root=out)
    with pytest.raises(ValueError, match="sha256"):
        build_dataset("cifar-fs", "val", root=out, verify=True)
    # truncation is caught on every load
    path.write_bytes(bytes(blob[:-100]))
    with pytest.raises(ValueError, match="truncated"):
        build_dataset("cifar-fs", "val", root=out)
    # two splits sharing a class
    manifest = prepared.read_manifest(out)
    manifest["splits"]["test"]["class_names"][0] = manifest["splits"]["train"]["class_names"][0]
    prepared.write_manifest(out, "cifar-fs", manifest["splits"], "edited")
    with pytest.raises(ValueError, match="share 1 class"):
        build_dataset("cifar-fs", "train", root=out)


def test_unknown_option(tmp_path, cache):
    with pytest.raises(ValueError, match="unknown cifar-fs option"):
        build_dataset("cifar-fs", "train", root=tmp_path, shots=5)


def test_cli_reports_bad_input(tmp_path, capsys):
    rc = main(["data", "prepare", "fc100", "--cifar100", str(tmp_path), "--out", str(tmp_path)])
    assert rc == 2 and "no CIFAR-100" in capsys.readouterr().err
    rc = main(["data", "check", str(tmp_path)])
    assert rc == 1 and "no known benchmark layout" in capsys.readouterr().out


def test_pixels_survive_the_round_trip(tmp_path, cache):
    """Channel order: CIFAR stores R-plane, G-plane, B-plane; we return H×W×C."""
    raw = write_cifar100(tmp_path)
    d = pickle.loads((raw / "train").read_bytes())
    images, labels = cifar.read_cifar100(tmp_path)
    assert np.array_equal(images[0], _image(0, 0))
    assert np.array_equal(images[0][:, :, 2].reshape(-1), d["data"][0, 2048:])
    assert labels[:4].tolist() == [0, 0, 1, 1]
    buf = io.BytesIO()
    Image.fromarray(images[5]).save(buf, format="PNG")
    assert buf.tell() > 0


def test_convert_metaoptnet_pickles_to_prepared(tmp_path, cache):
    src = tmp_path / "src"
    src.mkdir()
    _write_metaoptnet_pickles(src, "FC100", "fc100")
    dst = tmp_path / "dst"
    assert main(["data", "convert", "fc100", "--from", str(src), "--to", str(dst)]) == 0
    for split in ("train", "val", "test"):
        a = build_dataset("fc100", split, root=src)
        b = build_dataset("fc100", split, root=dst, verify=True)
        assert a.class_names == b.class_names
        assert np.array_equal(np.asarray(a.images), np.asarray(b.images))
    rc = main(
        ["data", "convert", "fc100", "--from", str(src), "--to", str(dst), "--format", "metaoptnet"]
    )
    assert rc == 2  # only miniImageNet converts to the MetaOptNet layout
