"""benchmarks/heads_accuracy.py: which alphabets its one-shot runs come from, its wall-time record,
and a tiny end-to-end run on real Omniglot with a config of its own (no accuracy asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from metasparse.data.omniglot import split_definitions
from metasparse.data.omniglot_runs import held_out_alphabets

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "heads_accuracy.py"
_spec = importlib.util.spec_from_file_location("heads_accuracy", SCRIPT)
heads_accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(heads_accuracy)


def test_runs_come_from_alphabets_the_split_never_trains_on():
    spec = split_definitions()
    trained_vinyals = {
        a for s in ("train", "val") for a in spec["vinyals"][s].get("evaluation", {})
    }
    vinyals = heads_accuracy.runs_alphabets("vinyals")
    assert vinyals == held_out_alphabets() and not set(vinyals) & trained_vinyals
    lake = heads_accuracy.runs_alphabets("lake")  # the lake scheme trains on background only
    assert len(lake) == 20 and set(vinyals) < set(lake) and trained_vinyals <= set(lake)
    assert not set(lake) & set(spec["lake"]["val"]["background"])


def test_train_seconds_reads_the_last_epochs_running_total():
    history = [{"elapsed_seconds": 3.0}, {"elapsed_seconds": 7.5}]
    assert heads_accuracy.train_seconds(history) == 7.5
    assert heads_accuracy.train_seconds([{"step": 1}]) is None  # runs from before the record
    assert heads_accuracy.train_seconds([]) is None


@pytest.mark.realdata
def test_tiny_lake_run_records_runs_from_unseen_alphabets(tmp_path, shared_data):
    root = shared_data / "omniglot"
    results = tmp_path / "omniglot_heads.json"
    tag = "pytest_tiny_lake"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "omniglot",
        "--root",
        str(root),
        "--heads",
        "proto",
        "--config",
        str(REPO / "configs" / "omniglot" / "conv4_proto_lake.yaml"),
        "--tag",
        tag,
        "--episodes",
        "3",
        "--threads",
        "1",
        "--results",
        str(results),
        "--output-dir",
        str(tmp_path),
        "--set",
        "train.epochs=1",
        "train.batches_per_epoch=2",
        "train.way=5",
        "val.episodes=2",
        "model.backbone_options={hidden: 8, out_channels: 8}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    entry = json.loads(results.read_text(encoding="utf-8"))[tag]
    assert entry["config"]["data"]["options"]["split_scheme"] == "lake"
    assert entry["omniglot_runs_alphabets"] == heads_accuracy.runs_alphabets("lake")
    assert len(entry["omniglot_runs_per_run"]) == 20
    assert entry["train_seconds"] > 0 and entry["val_curve_steps"] == [2]
    assert [(r["way"], r["shot"], r["episodes"]) for r in entry["test"]] == [
        (5, 1, 3),
        (5, 5, 3),
        (20, 1, 3),
        (20, 5, 3),
    ]


def test_table_prints_one_row_per_recorded_run():
    def row(way, shot, acc, used=None):
        stats = {} if used is None else {"features_used": used}
        return {"way": way, "shot": shot, "accuracy": acc, "ci95": 0.5, "head_stats": stats}

    results = {
        "machine": {"torch": "x"},  # not a run
        "proto": {"test": [row(5, 1, 95.0), row(20, 1, 85.25)], "train_seconds": 120.0},
        "gs": {
            "test": [row(5, 1, 93.0, 0.9), row(20, 1, 80.0, 0.75)],
            "omniglot_runs_error_rate": 33.25,
            "step_time_split_s": {"time/data": 0.001, "time/backbone": 0.5, "time/head": 0.25},
        },
    }
    lines = heads_accuracy.table(results).splitlines()
    assert lines[0].startswith("| run | 5-way 1-shot | 20-way 1-shot | one-shot runs, error")
    assert len(lines) == 4
    assert lines[2] == "| proto | 95.00 ± 0.50 | 85.25 ± 0.50 | - | 2 | 0.000 / 0.000 / 0.000 | - |"
    assert lines[3] == (
        "| gs | 93.00 ± 0.50 | 80.00 ± 0.50 | 33.2 % | - | 0.001 / 0.500 / 0.250 | 90% / 75% |"
    )


def test_table_selects_and_orders_runs_by_tag():
    row = {"way": 5, "shot": 1, "accuracy": 90.0, "ci95": 0.5, "head_stats": {}}
    results = {"a": {"test": [row]}, "b": {"test": [row]}}
    lines = heads_accuracy.table(results, ["b"]).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| b |")
    with pytest.raises(ValueError, match=r"no run 'c'.*recorded: a, b"):
        heads_accuracy.table(results, ["c"])
