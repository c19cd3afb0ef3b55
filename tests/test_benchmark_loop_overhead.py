"""Smoke test of benchmarks/loop_overhead.py on the built-in glyphs: every variant (channels-last
and bfloat16 autocast among them) is timed and the JSON holds the same rows (no timing is
asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "loop_overhead.py"


def test_loop_overhead_times_every_variant(tmp_path):
    raw = tmp_path / "loop.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(REPO / "configs" / "glyphs" / "conv4_proto.yaml"),
        "--rounds",
        "2",
        "--warmup",
        "0",
        "--channels-last",
        "--precision",
        "bfloat16",
        "--json",
        str(raw),
        "--set",
        "train.episodes_per_batch=1",
        "model.backbone_options={hidden: 8, out_channels: 8}",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    record = json.loads(raw.read_text(encoding="utf-8"))
    rows = record["rows"]
    variants = ["loop", "bare", "backbone", "data", "bare_channels_last"]
    variants += ["bare_bfloat16", "bare_channels_last_bfloat16", "loop_bfloat16"]
    assert [r["variant"] for r in rows] == variants
    assert all(r["median_ms"] > 0 and r["q1_ms"] <= r["q3_ms"] for r in rows)
    assert next(r for r in rows if r["variant"] == "bare")["ratio_to_bare"] == 1.0
    assert all(f"| 1 | {v} |" in out for v in variants)
    assert record["options"]["precision"] == ["bfloat16"]


def test_non_positive_rounds_is_an_argparse_error():
    cmd = [sys.executable, str(SCRIPT), "--config", "x.yaml", "--rounds", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert (
        res.returncode == 2 and "must be a positive integer, got '0': give 1 or more" in res.stderr
    )
