"""The packaged class splits equal the published lists (checked against ../shared/data/splits)."""

from __future__ import annotations

import csv
import json

import pytest

from metasparse.data import splits_catalog as cat

SPLITS = ("train", "val", "test")


def test_published_counts():
    expected = {
        "miniimagenet": (64, 16, 20),
        "tieredimagenet": (351, 97, 160),
        "cifar-fs": (64, 16, 20),
        "fc100": (60, 20, 20),
    }
    for bench, counts in expected.items():
        lists = [cat.benchmark_classes(bench, s) for s in SPLITS]
        assert tuple(len(x) for x in lists) == counts, bench
        assert len(set().union(*lists)) == sum(counts), f"{bench}: splits overlap"
    assert [len(cat.fc100_superclasses(s)) for s in SPLITS] == [12, 4, 4]
    assert [len(cat.tieredimagenet_categories(s)) for s in SPLITS] == [20, 6, 8]
    assert len(cat.cifar100_fine_classes()) == 100 == len(set(cat.cifar100_fine_classes()))


def test_bad_split_and_benchmark_names():
    with pytest.raises(ValueError, match="unknown split"):
        cat.cifar_fs_classes("training")
    with pytest.raises(ValueError, match="unknown benchmark"):
        cat.benchmark_classes("imagenet", "train")


@pytest.mark.realdata
def test_splits_equal_shared_lists(shared_data):
    root = shared_data / "splits"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    for s in SPLITS:
        pairs = json.loads((root / f"cifarfs_{s}.json").read_text(encoding="utf-8"))
        assert sorted(f for _, f in pairs) == cat.cifar_fs_classes(s)
        for coarse, fine in pairs:
            assert fine in cat.CIFAR100_SUPERCLASSES[coarse]
        assert sorted(json.loads((root / f"fc100_{s}.json").read_text(encoding="utf-8"))) == (
            cat.fc100_superclasses(s)
        )
        with open(root / f"miniimagenet_ravi_{s}.csv") as fh:
            wnids = sorted({row["label"] for row in csv.DictReader(fh)})
        assert wnids == cat.miniimagenet_classes(s)
        with open(root / f"tieredimagenet_ren_{s}.csv") as fh:
            rows = [r for r in csv.reader(fh) if r]
        by_cat: dict[str, list[str]] = {}
        for cls, category in rows:
            by_cat.setdefault(category, []).append(cls)
        assert {k: sorted(v) for k, v in by_cat.items()} == cat.tieredimagenet_categories(s)
