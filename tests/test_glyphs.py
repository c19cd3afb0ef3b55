"""The built-in glyphs: shapes, registry, determinism, disjoint splits, difficulty, errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from metasparse.data import build_dataset, glyphs
from metasparse.data.episodes import EpisodeDataset

SMALL = {"num_classes": [30, 10, 20], "samples_per_class": 6}


def test_default_splits_sizes_and_speed():
    glyphs.generate_split.cache_clear()
    start = time.perf_counter()
    sets = {s: build_dataset("glyphs", s) for s in ("train", "val", "test")}
    elapsed = time.perf_counter() - start
    assert {s: d.num_classes for s, d in sets.items()} == {"train": 600, "val": 100, "test": 200}
    assert {s: len(d) for s, d in sets.items()} == {"train": 12000, "val": 2000, "test": 4000}
    assert elapsed < 20.0  # a few seconds on one free core; generous for a shared machine
    image, label = sets["test"][4000 - 1]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 199
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    imgs = sets["train"].images
    assert imgs.dtype == np.uint8 and not imgs.flags.writeable
    # Bright strokes on a dark background, with room between.
    assert 0.03 < (imgs[:500] > 127).mean() < 0.3 and np.median(imgs[:500]) < 40


def test_deterministic_from_seed_and_prefix_stable():
    a = glyphs.build(None, "train", False, **SMALL)
    glyphs.generate_split.cache_clear()
    b = glyphs.build(None, "train", False, **SMALL)
    assert np.array_equal(a.images, b.images)
    c = glyphs.build(None, "train", False, seed=1, **SMALL)
    assert not np.array_equal(a.images, c.images)
    # Class c has its own random stream: fewer classes give the same first classes.
    fewer = glyphs.build(None, "train", False, num_classes=[12, 10, 20], samples_per_class=6)
    assert np.array_equal(fewer.images, a.images[: 12 * 6])


def test_splits_are_disjoint_glyphs():
    """Each split draws its glyphs from its own streams: no skeleton recurs across splits."""
    sets = {s: glyphs.build(None, s, False, **SMALL) for s in ("train", "val", "test")}
    names = [set(d.class_names) for d in sets.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    skeletons = {
        s: np.stack([glyphs.glyph_shape(glyphs.class_rng(0, s, c))[0] for c in range(n)])
        for s, n in zip(("train", "val", "test"), SMALL["num_classes"], strict=True)
    }
    for s, t in (("train", "val"), ("train", "test"), ("val", "test")):
        gap = np.abs(skeletons[s][:, None] - skeletons[t][None]).max(axis=(-1, -2, -3))
        assert gap.min() > 0.05, (s, t)
    # The skeleton really is what gets drawn: class 0 redrawn alone gives the same images.
    again = glyphs.generate_split("val", 1, 6, 28, 0)
    assert np.array_equal(again, sets["val"].images[:6])
    assert not np.array_equal(sets["train"].images[:6], sets["val"].images[:6])


def test_learnable_but_not_trivial_for_pixel_matching():
    """1-NN in pixel space on 5-way 1-shot test episodes: well above chance, far from perfect."""
    test = glyphs.build(None, "test", False)
    eps = EpisodeDataset(test, 5, 1, 10, num_episodes=60, seed=0)
    acc = []
    for i in range(len(eps)):
        ep = eps[i]
        nearest = torch.cdist(ep["query"].flatten(1), ep["support"].flatten(1)).argmin(1)
        acc.append(float((nearest == ep["query_labels"]).float().mean()))
    assert 0.35 < np.mean(acc) < 0.8


def test_augmentation_is_random_and_in_range():
    ds = glyphs.build(None, "train", True, **SMALL)
    torch.manual_seed(0)
    x1, _ = ds[3]
    x2, _ = ds[3]
    assert x1.dtype == torch.float32 and x1.shape == (1, 28, 28)
    assert not torch.equal(x1, x2)
    assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0


def test_other_image_size():
    ds = glyphs.build(None, "val", False, num_classes=[5, 4, 5], samples_per_class=3, image_size=40)
    assert ds.images.shape == (12, 40, 40)
    assert (ds.images > 127).mean() > 0.02


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_classes": 900}, r"class count of each split, e.g. \[600, 100, 200\]"),
        ({"num_classes": [10, 10]}, r"must be \[train, val, test\] counts"),
        ({"num_classes": [10, 0, 5]}, "num_classes for 'val' must be a positive integer"),
        ({"num_classes": {"train": 5}}, "lacks"),
        ({"samples_per_class": 0}, "samples_per_class must be >= 1"),
        ({"image_size": 4}, "image_size must be >= 8"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        glyphs.build(None, "train", False, **options)
    with pytest.raises(ValueError, match="unknown split"):
        glyphs.build(None, "dev", False)
