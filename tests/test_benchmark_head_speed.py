"""Smoke test of benchmarks/head_speed.py: every method runs and reports what the table needs.

No timing is asserted (speed targets live in benchmarks/README.md); this only keeps the script
runnable, its outputs well formed and its gap column honest.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "head_speed.py"


def _load():
    spec = importlib.util.spec_from_file_location("head_speed", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_head_speed_runs_every_method_on_a_tiny_grid(tmp_path, monkeypatch, capsys):
    mod = _load()
    out, raw = tmp_path / "table.md", tmp_path / "rows.json"
    argv = "--shots 2 --dims 48 --ratios 0.1 --tasks 2 --way 3 --repeats 1 --min-seconds 0"
    argv += f" --ours-threads 2 --out {out} --json {raw}"
    monkeypatch.setattr(sys, "argv", ["head_speed.py", *argv.split()])
    threads = torch.get_num_threads()
    try:
        mod.main()
    finally:
        torch.set_num_threads(threads)
    rows = json.loads(raw.read_text(encoding="utf-8"))["rows"]
    by = {r["method"]: r for r in rows}
    assert rows[0]["method"] == "qpth SVM-CS (λ1=0)"
    for m in ("ours (gap ≤ 1e-5)", "ours 5 it", "PGD 5 steps (paper)"):
        assert m in by
    assert by["ours (gap ≤ 1e-5)"]["gap"] <= 1e-5
    assert by["ours (gap ≤ 1e-5), 2 threads"]["gap"] <= 1e-5
    assert by["PGD 5 steps (paper)"]["iters"] == 5
    assert all(r["ms"] > 0 and r["vs_qpth"] > 0 for r in rows)
    table = out.read_text()
    assert table.count("\n| 2 | 48 |") == len(rows)
    assert table in capsys.readouterr().out


def test_head_speed_default_threads_mode(monkeypatch, capsys):
    # --threads 0 never sets a thread count (so qpth may use every core); it refuses
    # --ours-threads, which would set one
    mod = _load()
    argv = "--shots 1 --dims 24 --ratios 0.1 --tasks 1 --way 2 --repeats 1 --min-seconds 0"
    monkeypatch.setattr(sys, "argv", ["head_speed.py", *argv.split(), "--threads", "0"])
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    mod.main()
    assert calls == [] and "| 1 | 24 |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["head_speed.py", "--threads", "0", "--ours-threads", "2"])
    try:
        mod.main()
    except ValueError as exc:
        assert "--ours-threads" in str(exc)
    else:
        raise AssertionError("--threads 0 with --ours-threads must be refused")
