"""``metasparse data check``: names the benchmark, counts per split, and the problems found."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from metasparse.cli import main
from metasparse.data import check
from metasparse.data import splits_catalog as cat


def _write_mini(root, classes, per_class=2):
    root.mkdir(parents=True)
    count = 0
    with zipfile.ZipFile(root / "images.zip", "w") as z:
        for split, wnids in classes.items():
            rows = [("filename", "label")]
            for w in wnids:
                for k in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((84, 84, 3), k * 40, np.uint8)).save(buf, "JPEG")
                    name = f"{w}{count:08d}.jpg"
                    count += 1
                    z.writestr(f"images/{name}", buf.getvalue())
                    rows.append((name, w))
            with open(root / f"{split}.csv", "w", newline="") as fh:
                csv.writer(fh).writerows(rows)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METASPARSE_CACHE", str(tmp_path / "cache"))


def test_published_split_passes(tmp_path, capsys):
    classes = {s: cat.miniimagenet_classes(s) for s in ("train", "val", "test")}
    _write_mini(tmp_path / "m", classes, per_class=1)
    reports = check.check(tmp_path / "m")
    assert [(r.benchmark, r.layout, r.ok) for r in reports] == [("miniimagenet", "csv", True)]
    assert [(s.split, s.num_classes, s.num_images) for s in reports[0].splits] == [
        ("train", 64, 64),
        ("val", 16, 16),
        ("test", 20, 20),
    ]
    assert main(["data", "check", str(tmp_path / "m")]) == 0
    assert "matches the published split" in capsys.readouterr().out


def test_problems_are_reported(tmp_path, capsys):
    classes = {"train": ["n01", "n02"], "val": ["n03"], "test": ["n01", "n04"]}
    _write_mini(tmp_path / "m", classes)
    reports = check.check(tmp_path / "m")
    assert len(reports) == 1 and not reports[0].ok
    text = "\n".join(reports[0].problems)
    assert "share 1 class(es) (n01)" in text
    assert main(["data", "check", str(tmp_path / "m")]) == 1
    assert "problem:" in capsys.readouterr().out


def test_wrong_class_count_is_reported(tmp_path):
    classes = {"train": ["n01", "n02"], "val": ["n03"], "test": ["n04"]}
    _write_mini(tmp_path / "m", classes)
    (report,) = check.check(tmp_path / "m")
    assert "train: 2 classes, the published split has 64" in report.problems


def test_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder; pass the folder that holds"):
        check.check(tmp_path / "absent")


@pytest.mark.slow
@pytest.mark.realdata
def test_real_omniglot_and_miniimagenet(shared_data, capsys):
    for name, first in (("omniglot", "1028 classes"), ("miniimagenet", "64 classes")):
        root = shared_data / name
        if not root.is_dir():
            pytest.skip(f"{root} absent")
        assert main(["data", "check", str(root)]) == 0
        out = capsys.readouterr().out
        assert first in out and "matches the published split" in out
