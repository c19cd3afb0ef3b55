"""Smoke test of benchmarks/backward_paths.py: every backward runs in its own process and the
table reports a time, a peak memory and a certified gap for each (no timing is asserted); the
``--json`` file holds the same rows."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backward_paths.py"


def test_backward_paths_runs_every_case(tmp_path):
    raw = tmp_path / "backward_paths.json"
    cmd = [sys.executable, str(SCRIPT), "--shots", "1", "--dims", "40", "--repeats", "1"]
    out = subprocess.run(
        [*cmd, "--json", str(raw)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 1 | 40 |")]
    assert len(rows) == 4, out
    for row in rows:
        fwd, bwd, peak, gap = (cell.strip() for cell in row.strip("|").split("|")[3:])
        assert float(fwd) > 0 and float(bwd) > 0 and float(peak) >= 0
        assert float(gap) <= 1e-5
    # the JSON file: the same rows, in order, with their figures as numbers
    data = json.loads(raw.read_text(encoding="utf-8"))
    assert data["settings"]["shots"] == [1] and data["settings"]["dims"] == [40]
    assert data["settings"]["repeats"] == 1 and "child" not in data["settings"]
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["torch"]
    assert data["timestamp"].endswith("+00:00")
    assert len(data["rows"]) == len(rows)
    for row, rec in zip(rows, data["rows"], strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert (rec["shot"], rec["p"], rec["backward"]) == (1, 40, cells[2])
        assert rec["mode"] in ("auto", "cg-only", "dense") and rec["tau"] in (0.0, 1e-3)
        for key in ("fwd_ms", "bwd_ms", "peak_mb", "gap"):
            assert isinstance(rec[key], float) and math.isfinite(rec[key]), rec
        for key, cell, fmt in (("fwd_ms", 3, ".0f"), ("bwd_ms", 4, ".0f"), ("peak_mb", 5, ".0f")):
            assert format(rec[key], fmt) == cells[cell]
        assert format(rec["gap"], ".1e") == cells[6]
