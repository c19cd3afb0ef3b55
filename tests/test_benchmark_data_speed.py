"""Smoke test of benchmarks/data_speed.py on the real miniImageNet train split: every loader and
model row is printed and the ``--json`` file holds the same figures (no speed is asserted).

The smallest setting the options allow still steps Conv-4 on a full batch of 8 episodes and
ResNet-12 on one (minutes on a CPU), so the backbones are replaced by a tiny stand-in here: the
loader rows are the script's own, the model rows only check the step and its bookkeeping."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "data_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("data_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_backbone(name: str) -> torch.nn.Module:
    """A stand-in for ``name`` with parameters and a (tasks·n, 16) output, in milliseconds."""
    return torch.nn.Sequential(torch.nn.AvgPool2d(12), torch.nn.Flatten(), torch.nn.Linear(147, 16))


@pytest.mark.realdata
def test_data_speed_smoke(shared_data, tmp_path, monkeypatch, capsys):
    root = shared_data / "miniimagenet"
    if not (root / "train.csv").is_file():
        pytest.skip(f"real miniImageNet (train split) not found in {root}")
    mod = _load()
    monkeypatch.setattr(mod, "build_backbone", _tiny_backbone)
    raw = tmp_path / "data_speed.json"
    argv = ["--root", str(root), "--batches", "1", "--workers", "0", "--resnet-episodes", "1"]
    monkeypatch.setattr(sys, "argv", ["data_speed.py", *argv, "--json", str(raw)])
    mod.main()
    out = capsys.readouterr().out
    table = out.split("| --- | --- | --- |\n")[1].splitlines()
    assert len(table) == 4, out  # 0 workers with and without augmentation, conv4, resnet12
    data = json.loads(raw.read_text(encoding="utf-8"))
    assert data["settings"]["batches"] == 1 and data["settings"]["workers"] == [0]
    assert data["settings"]["tasks"] == 8 and data["machine"]["torch_threads"] == 1
    assert data["timestamp"].endswith("+00:00") and data["machine"]["torch"]
    images, classes, built = re.search(
        r"dataset: (\d+) images, (\d+) classes, built in (\S+) s", out
    ).groups()
    assert (data["dataset"]["images"], data["dataset"]["classes"]) == (int(images), int(classes))
    assert format(data["dataset"]["build_s"], ".1f") == built
    rows = data["rows"]
    assert len(rows) == len(table)
    assert [r["kind"] for r in rows] == ["loader", "loader", "step", "step"]
    assert [r.get("augment") for r in rows[:2]] == [True, False]
    assert [r.get("backbone") for r in rows[2:]] == ["conv4", "resnet12"]
    assert [r["episodes_timed"] for r in rows[2:]] == [8, 1]
    for line, rec in zip(table, rows, strict=True):
        what, rate, sec = (cell.strip() for cell in line.strip("|").split("|"))
        assert rec["what"] == what
        numbers = ["episodes_per_s", "s_per_batch"] + ["first_batch_s"] * (rec["kind"] == "loader")
        for key in numbers:
            assert isinstance(rec[key], float) and math.isfinite(rec[key]) and rec[key] > 0, rec
        assert format(rec["episodes_per_s"], ".1f") == rate
        assert format(rec["s_per_batch"], ".2f") == sec
        if rec["kind"] == "loader":
            assert f"first batch {rec['first_batch_s']:.2f} s" in out


@pytest.mark.parametrize("option", ["--batches", "--resnet-episodes", "--threads"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_data_speed_refuses_counts_below_one(option, value, monkeypatch, capsys):
    # --batches 0 used to time nothing and then divide by zero; argparse refuses it before any data
    mod = _load()
    monkeypatch.setattr(sys, "argv", ["data_speed.py", option, value])
    with pytest.raises(SystemExit) as exc:
        mod.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be a positive integer, got '{value}': give 1 or more" in err
