"""Omniglot: preprocessing, zip decoding and its cache, split schemes, counts on the real data."""

from __future__ import annotations

import functools
import io
import json
import os
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from metasparse.data import omniglot
from metasparse.data.episodes import EpisodeDataset


def png_bytes(stroke_row: int, size: int = 105) -> bytes:
    """A mode-'1' PNG like Omniglot's: white paper, one black horizontal stroke."""
    img = Image.new("1", (size, size), 1)
    for x in range(20, 85):
        for y in range(stroke_row, stroke_row + 6):
            img.putpixel((x, y), 0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fake_zip(path, top="images_background", alphabets=(("Alpha", 2), ("Beta", 3)), drawers=3):
    """A tiny zip with the official layout (directories entries included, as in the real zips)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/", b"")
        for a, (alphabet, n_chars) in enumerate(alphabets):
            for c in range(1, n_chars + 1):
                for d in range(1, drawers + 1):
                    name = f"{top}/{alphabet}/character{c:02d}/{a:02d}{c:02d}_{d:02d}.png"
                    zf.writestr(name, png_bytes(10 + 10 * c))
    return path


def test_preprocess_inverts_and_resizes():
    arr = omniglot.preprocess_png(png_bytes(50), image_size=28)
    assert arr.shape == (28, 28) and arr.dtype == np.uint8
    assert arr[0, 0] == 0 and arr[-1, -1] == 0  # paper is black
    assert arr[14, 14] > 200  # the stroke (rows 50-55 of 105 → row ~14) is bright
    assert arr[13:16].mean() > 0 and arr.mean() < 60
    assert omniglot.preprocess_png(png_bytes(50), image_size=105).shape == (105, 105)


def test_load_zip_decodes_sorted_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("METASPARSE_CACHE", str(tmp_path / "cache"))
    path = fake_zip(tmp_path / "images_background.zip")
    arrays = omniglot.load_zip(path, image_size=20)
    assert arrays["images"].shape == (15, 20, 20)
    assert arrays["characters"][0] == "Alpha/character01"
    assert arrays["characters"][-1] == "Beta/character03"
    assert list(arrays["files"][:3]) == ["0001_01.png", "0001_02.png", "0001_03.png"]
    assert len(list((tmp_path / "cache").glob("omniglot-*.npz"))) == 1
    # A second process would read the cache: clear the in-memory memo and forbid decoding.
    omniglot._load_zip_cached.cache_clear()
    monkeypatch.setattr(omniglot, "_decode_zip", lambda *a: pytest.fail("decoded again"))
    again = omniglot.load_zip(path, image_size=20)
    assert np.array_equal(again["images"], arrays["images"])
    # A rewritten zip (new size/mtime) is decoded afresh.
    monkeypatch.undo()
    monkeypatch.setenv("METASPARSE_CACHE", str(tmp_path / "cache"))
    fake_zip(path, alphabets=(("Alpha", 1),))
    os.utime(path, ns=(1, 1))
    assert omniglot.load_zip(path, image_size=20)["images"].shape == (3, 20, 20)


def test_missing_root_and_zip_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images_background\.zip.*brendenlake/omniglot"):
        omniglot.build(tmp_path, "train", False)
    with pytest.raises(ValueError, match="omniglot needs a root"):
        omniglot.build(None, "train", False)
    with pytest.raises(ValueError, match="split_scheme='lake'"):
        omniglot.build(tmp_path, "train", False, background="small1")
    with pytest.raises(ValueError, match="unknown split_scheme"):
        omniglot.build(tmp_path, "train", False, split_scheme="ravi")
    bad = tmp_path / "bad"
    bad.mkdir()
    with zipfile.ZipFile(bad / "images_evaluation.zip", "w") as zf:
        zf.writestr("readme.txt", "no images")
    with pytest.raises(ValueError, match="holds no"):
        omniglot.build(bad, "test", False, split_scheme="lake")


@functools.cache
def _zip_characters(path) -> frozenset[str]:
    pattern = re.compile(r"^[^/]+/([^/]+/character\d+)/[^/]+\.png$")
    with zipfile.ZipFile(path) as zf:
        return frozenset(m.group(1) for n in zf.namelist() if (m := pattern.match(n)))


@pytest.mark.realdata
def test_real_character_counts(shared_data):
    root = shared_data / "omniglot"
    counts = {k: len(_zip_characters(root / f)) for k, f in omniglot.ZIP_FILES.items()}
    assert counts == {"background": 964, "evaluation": 659, "small1": 136, "small2": 156}


@pytest.mark.realdata
def test_packaged_vinyals_split_matches_reference_files(shared_data):
    for split in ("train", "val", "test"):
        path = shared_data / "splits" / f"omniglot_vinyals_{split}.json"
        if not path.is_file():
            pytest.skip(f"{path} absent")
        reference = {
            zset: [f"{a}/{c}" for a, chars in alphabets.items() for c in chars]
            for zset, alphabets in json.loads(path.read_text(encoding="utf-8")).items()
            if alphabets
        }
        ours = omniglot.vinyals_characters(split)
        assert {k: sorted(v) for k, v in ours.items()} == {
            k: sorted(v) for k, v in reference.items()
        }


@pytest.fixture
def names_only(monkeypatch):
    """Replace decoding by blank 2×2 images: split logic on the real file lists, in milliseconds."""

    def load(path, image_size=28):
        characters = np.repeat(sorted(_zip_characters(path)), 20)
        return {"images": np.zeros((characters.size, 2, 2), np.uint8), "characters": characters}

    monkeypatch.setattr(omniglot, "load_zip", load)


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("scheme", "background", "classes"),
    [
        ("vinyals", "full", {"train": 1028 * 4, "val": 172, "test": 423}),
        ("lake", "full", {"train": 781 * 4, "val": 183, "test": 659}),
        ("lake", "small1", {"train": 136 * 4, "val": 183, "test": 659}),
        ("lake", "small2", {"train": 156 * 4, "val": 183, "test": 659}),
    ],
)
def test_split_counts_and_disjointness(shared_data, names_only, scheme, background, classes):
    root = shared_data / "omniglot"
    chars = {}
    for split, expected in classes.items():
        ds = omniglot.build(root, split, False, split_scheme=scheme, background=background)
        assert ds.num_classes == expected, split
        assert len(ds) == 20 * expected
        chars[split] = {n.rsplit("/rot", 1)[0] for n in ds.class_names}
    assert not chars["train"] & chars["val"]
    assert not chars["train"] & chars["test"]
    assert not chars["val"] & chars["test"]
    rotated = omniglot.build(root, "test", False, split_scheme=scheme, rotate_eval=True)
    assert rotated.num_classes == 4 * classes["test"]
    plain = omniglot.build(
        root, "train", False, split_scheme=scheme, background=background, rotations=False
    )
    assert plain.num_classes == classes["train"] // 4
    # trainval: train and val characters together, rotated as train
    both = omniglot.build(root, "trainval", False, split_scheme=scheme, background=background)
    assert both.num_classes == classes["train"] + 4 * classes["val"]
    assert {n.rsplit("/rot", 1)[0] for n in both.class_names} == chars["train"] | chars["val"]


@pytest.mark.realdata
def test_real_small1_images_rotations_and_episodes(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("METASPARSE_CACHE", str(tmp_path))
    root = shared_data / "omniglot"
    ds = omniglot.build(root, "train", False, split_scheme="lake", background="small1")
    assert ds.num_classes == 544 and ds.images.shape == (10880, 28, 28)
    assert ds.class_names[0] == "images_background_small1/Balinese/character01/rot000"
    assert ds.class_names[136] == "images_background_small1/Balinese/character01/rot090"
    first = ds.images[ds.indices_by_class()[0]]
    turned = ds.images[ds.indices_by_class()[136]]
    assert np.array_equal(np.rot90(first, 1, axes=(1, 2)), turned)
    # Bright strokes on black paper, as documented.
    assert np.median(ds.images[:200]) == 0 and ds.images[:200].max() == 255
    assert 0.05 < (ds.images[:200] > 127).mean() < 0.3
    ep = EpisodeDataset(ds, 20, 1, 19, num_episodes=1, seed=0)[0]
    assert ep["support"].shape == (20, 1, 28, 28)
    with pytest.raises(ValueError, match="has only 20"):
        EpisodeDataset(ds, 5, 1, 20, num_episodes=1, seed=0)
    image, _ = omniglot.build(root, "train", True, split_scheme="lake", background="small1")[0]
    assert image.dtype.is_floating_point and image.shape == (1, 28, 28)


@pytest.mark.slow
@pytest.mark.realdata
def test_real_vinyals_full_build(shared_data):
    """Decodes all 32,460 images once (cached in the user's cache afterwards)."""
    root = shared_data / "omniglot"
    sizes = {s: omniglot.build(root, s, False).num_classes for s in ("train", "val", "test")}
    assert sizes == {"train": 4112, "val": 172, "test": 423}


def test_trainval_is_refused_where_a_dataset_has_none():
    from metasparse.data import build_dataset

    with pytest.raises(ValueError, match="split 'trainval' exists for omniglot only"):
        build_dataset("miniimagenet", "trainval", root="anywhere")
