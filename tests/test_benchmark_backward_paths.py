"""Smoke test of benchmarks/backward_paths.py: every backward runs in its own process and the
table reports a time, a peak memory and a certified gap for each (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backward_paths.py"


def test_backward_paths_runs_every_case():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--shots", "1", "--dims", "40", "--repeats", "1"],
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
