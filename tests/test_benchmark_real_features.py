"""Smoke tests of benchmarks/real_features.py on real miniImageNet images: both solver variants
certify every batch, and so does our head against qpth (no timing or iteration count is
asserted); the ``--json`` file holds the printed rows' figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_features.py"


def _json_rows(path: Path, printed: set[str], numbers: tuple[str, ...]) -> dict[str, dict]:
    """The JSON file's rows, checked against the printed ones (one each, figures finite
    numbers), by their printed row."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["settings"]["backbones"] == ["conv4"] and data["settings"]["tasks"] == 2
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["torch"]
    assert data["timestamp"].endswith("+00:00")
    assert len(data["rows"]) == len(printed)
    by_row = {}
    for rec in data["rows"]:
        assert (rec["backbone"], rec["p"], rec["shot"], rec["batch"]) == ("conv4", 1600, 1, 0)
        for key in numbers:
            assert isinstance(rec[key], int | float) and math.isfinite(rec[key]), (key, rec)
        [row] = [r for r in printed if r.split("|")[5].strip() == format(rec["ratio"], "g")]
        by_row[row] = rec
    assert set(by_row) == printed
    return by_row


def test_real_features_benchmark_certifies_both_variants(shared_data, tmp_path):
    raw = tmp_path / "real_features.json"
    cmd = [sys.executable, str(SCRIPT), "--root", str(shared_data / "miniimagenet")]
    cmd += ["--backbones", "conv4", "--shots", "1", "--batches", "1", "--tasks", "2"]
    cmd += ["--repeats", "1", "--json", str(raw)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    # each row is printed as it comes, then again in the final table
    rows = {line for line in out.splitlines() if line.startswith("| conv4 | 1600 | 1 | 0 |")}
    assert len(rows) == 2, out
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        used, gaps = float(cells[5]), [float(g) for g in cells[8].split(",")]
        assert 0.0 < used <= 1.0
        assert max(gaps) <= 1e-5
    numbers = ("features_used", "ms_fixed", "ms_adaptive", "gap_fixed", "gap_adaptive")
    numbers += tuple(f"iters_{s}_{v}" for s in ("mean", "max") for v in ("fixed", "adaptive"))
    for row, rec in _json_rows(raw, rows, numbers).items():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert format(rec["features_used"], ".3f") == cells[5]
        its = [
            f"{rec[f'iters_mean_{v}']:.1f}/{rec[f'iters_max_{v}']}" for v in ("fixed", "adaptive")
        ]
        assert " → ".join(its) == cells[6]
        assert f"{rec['ms_fixed']:.0f} → {rec['ms_adaptive']:.0f}" == cells[7]
        assert f"{rec['gap_fixed']:.1e}, {rec['gap_adaptive']:.1e}" == cells[8]


def test_real_features_benchmark_against_qpth(shared_data, tmp_path):
    raw = tmp_path / "real_features_vs_qpth.json"
    cmd = [sys.executable, str(SCRIPT), "--root", str(shared_data / "miniimagenet"), "--vs-qpth"]
    cmd += ["--backbones", "conv4", "--shots", "1", "--batches", "1", "--tasks", "2"]
    cmd += ["--repeats", "1", "--ratios", "0.1", "0.5", "--json", str(raw)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = {line for line in out.splitlines() if line.startswith("| conv4 | 1600 | 1 | 0 |")}
    assert len(rows) == 2, out
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        ours, qpth, ratio = float(cells[7]), float(cells[8]), float(cells[9])
        assert ours > 0 and qpth > 0  # times printed to the ms, the ratio to 0.01
        assert (ours - 0.5) / (qpth + 0.5) - 0.005 <= ratio <= (ours + 0.5) / (qpth - 0.5) + 0.005
        assert max(float(g) for g in cells[10].split(",")) <= 1e-5
    numbers = ("features_used", "iters_mean", "iters_max", "ours_ms", "qpth_ms", "vs_qpth")
    numbers += ("ours_gap", "qpth_gap")
    for row, rec in _json_rows(raw, rows, numbers).items():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert format(rec["features_used"], ".3f") == cells[5]
        assert f"{rec['iters_mean']:.1f}/{rec['iters_max']}" == cells[6]
        assert [format(rec[k], ".0f") for k in ("ours_ms", "qpth_ms")] == cells[7:9]
        assert format(rec["vs_qpth"], ".2f") == cells[9]
        assert math.isclose(rec["vs_qpth"], rec["ours_ms"] / rec["qpth_ms"])
        assert f"{rec['ours_gap']:.1e}, {rec['qpth_gap']:.1e}" == cells[10]
