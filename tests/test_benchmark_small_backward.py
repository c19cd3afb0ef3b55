"""Smoke test of benchmarks/small_backward.py: both backwards run on a given shape, agree, and
the ``--json`` file holds the printed rows (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "small_backward.py"


def test_small_backward_times_both_paths_and_names_autos_choice(tmp_path):
    raw = tmp_path / "small_backward.json"
    cmd = [sys.executable, str(SCRIPT), "--shapes", "3,2,5;12,5,2", "--ratios", "0.3"]
    out = subprocess.run(
        [*cmd, "--repeats", "1", "--json", str(raw)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    rows = [
        line for line in out.splitlines() if line.startswith("| 3 |") or line.startswith("| 12 |")
    ]
    assert len(rows) == 2, out
    data = json.loads(raw.read_text(encoding="utf-8"))
    assert [r["auto"] for r in data["rows"]] == ["dense", "CG"]  # 18 and 720 dual coordinates
    for rec in data["rows"]:
        assert rec["dense_ms"] > 0 and rec["cg_ms"] > 0 and rec["gap"] <= 1e-5
        assert rec["grad_rel_diff"] < 1e-3  # both solve the same system (CG to 1e-5)
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["processor"]
