"""Smoke test of benchmarks/gpu_check.py in its CPU form (what CI can run of the GPU check).

No timing is asserted: the check's figures are only meaningful on a GPU. This keeps the script
runnable, its tables and JSON complete and consistent, and its gap column honest.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
HEADS = ("group_sparse_svm", "svm_cs", "proto", "ridge")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_gpu_check_cpu_form_reports_every_row(tmp_path):
    raw = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--json", str(raw)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    ).stdout
    data = json.loads(raw.read_text(encoding="utf-8"))
    assert data["settings"]["form"] == "small" and data["machine"]["device"] == "cpu"
    assert data["machine"]["processor"] and data["machine"]["torch"]
    assert data["elapsed_s"] > 0 and data["timestamp"].endswith("+00:00")

    # (a) the head benchmark: one row per shot × p × ratio, both methods timed, ours certified
    s = data["settings"]
    heads = data["head_benchmark"]
    assert len(heads) == len(s["shots"]) * len(s["dims"]) * len(s["ratios"])
    table_a = [ln for ln in out.splitlines() if ln.startswith(("| 1 | ", "| 5 | "))]
    assert len(table_a) == len(heads), out
    for row, line in zip(heads, table_a, strict=True):
        assert row["error"] is None and row["qpth_error"] is None, row
        for key in ("ours_ms", "qpth_ms", "speedup", "qpth_gap"):
            assert _positive(row[key]), (key, row)
        assert 0 <= row["ours_gap"] <= 1e-5, row
        assert row["target_met"] is None  # the ≥ 10× target is the GPU's
        cells = _cells(line)
        assert cells[:3] == [str(row["shot"]), str(row["p"]), format(row["ratio"], "g")]
        assert cells[3] == format(row["ours_ms"], ".1f") and cells[8] == "n/a (CPU)"

    # (b) the short training: every head, positive times, shares strictly between 0 and 1
    trained = data["training"]
    assert [r["head"] for r in trained] == list(HEADS) * len(s["train_shots"])
    table_b = [ln for ln in out.splitlines() if ln.startswith(tuple(f"| {h} |" for h in HEADS))]
    assert len(table_b) == len(trained), out
    for row, line in zip(trained, table_b, strict=True):
        assert row["error"] is None, row
        for key in ("step_ms", "head_ms", "backbone_ms", "episodes_per_s", "data_ms"):
            assert _positive(row[key]), (key, row)
        assert 0 < row["head_share"] < 1, row
        assert row["peak_mb"] >= 0 and row["p"] == 2560 and row["threads"] == 1
        assert row["images"] == s["episodes"] * 5 * (row["shot"] + s["query"])
        if row["head"] == "group_sparse_svm":
            assert 0 <= row["head_gap"] <= 1e-5, row
        cells = _cells(line)
        assert cells[4] == format(row["step_ms"], ".0f")
        assert cells[6] == f"{100 * row['head_share']:.1f} %"


def test_gpu_check_records_a_missing_qpth_and_goes_on(monkeypatch):
    mod = _load()
    monkeypatch.setitem(sys.modules, "metasparse.heads.svm_cs", None)  # import fails
    args = mod.parse_args(["--device", "cpu", "--shots", "1", "--dims", "24", "--tasks", "1"])
    rows = mod.head_benchmark(args, start=time.perf_counter())
    assert len(rows) == 1
    row = rows[0]
    assert row["qpth_ms"] is None and row["speedup"] is None
    assert "ImportError" in row["qpth_error"] or "ModuleNotFoundError" in row["qpth_error"]
    assert _positive(row["ours_ms"]) and row["ours_gap"] <= 1e-5
    result = {
        "machine": mod.machine("cpu"),
        "settings": vars(args),
        "head_benchmark": rows,
        "training": [{"head": "svm_cs", "shot": 1, "error": "exit 1: ImportError: qpth"}],
        "elapsed_s": 1.0,
    }
    table = mod.to_markdown(result)
    assert "qpth: " in table and "exit 1: ImportError: qpth" in table


def test_gpu_check_forms():
    mod = _load()
    small = mod.parse_args(["--device", "cpu"])
    assert small.form == "small" and small.image_size == 32 and small.dims == [2560]
    full = mod.parse_args(["--device", "cpu", "--full", "--steps", "1"])
    assert full.form == "full" and full.image_size == 84 and full.train_shots == [1, 5, 15]
    assert full.dims == [2560, 16000] and full.steps == 1  # an explicit value wins
