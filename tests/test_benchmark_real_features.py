"""Smoke tests of benchmarks/real_features.py on real miniImageNet images: both solver variants
certify every batch, and so does our head against qpth (no timing or iteration count is
asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_features.py"


def test_real_features_benchmark_certifies_both_variants(shared_data):
    cmd = [sys.executable, str(SCRIPT), "--root", str(shared_data / "miniimagenet")]
    cmd += ["--backbones", "conv4", "--shots", "1", "--batches", "1", "--tasks", "2"]
    cmd += ["--repeats", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    # each row is printed as it comes, then again in the final table
    rows = {line for line in out.splitlines() if line.startswith("| conv4 | 1600 | 1 | 0 |")}
    assert len(rows) == 2, out
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        used, gaps = float(cells[5]), [float(g) for g in cells[8].split(",")]
        assert 0.0 < used <= 1.0
        assert max(gaps) <= 1e-5


def test_real_features_benchmark_against_qpth(shared_data):
    cmd = [sys.executable, str(SCRIPT), "--root", str(shared_data / "miniimagenet"), "--vs-qpth"]
    cmd += ["--backbones", "conv4", "--shots", "1", "--batches", "1", "--tasks", "2"]
    cmd += ["--repeats", "1", "--ratios", "0.1", "0.5"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = {line for line in out.splitlines() if line.startswith("| conv4 | 1600 | 1 | 0 |")}
    assert len(rows) == 2, out
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        ours, qpth, ratio = float(cells[7]), float(cells[8]), float(cells[9])
        assert ours > 0 and qpth > 0  # times printed to the ms, the ratio to 0.01
        assert (ours - 0.5) / (qpth + 0.5) - 0.005 <= ratio <= (ours + 0.5) / (qpth - 0.5) + 0.005
        assert max(float(g) for g in cells[10].split(",")) <= 1e-5
