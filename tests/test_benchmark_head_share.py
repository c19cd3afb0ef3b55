"""Smoke test of benchmarks/head_share.py on a tiny glyphs run: every way gets a row with a
share in (0, 1) and the solver's statistics (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "head_share.py"


def test_head_share_reports_every_way(tmp_path, tiny_group_sparse_checkpoint):
    raw = tmp_path / "share.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--checkpoint",
        str(tiny_group_sparse_checkpoint),
        "--ways",
        "3",
        "6",
        "--shot",
        "2",
        "--query",
        "2",
        "--batches",
        "2",
        "--json",
        str(raw),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = json.loads(raw.read_text(encoding="utf-8"))["rows"]
    assert [(r["way"], r["images"]) for r in rows] == [(3, 12), (6, 24)]
    for r in rows:
        assert 0.0 < r["head_share"] < 1.0 and r["head_stats"]["iterations"] >= 1
        assert r["head_stats"]["converged"] == 1.0
    assert "| 6 | 24 |" in out
