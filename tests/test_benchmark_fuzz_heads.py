"""Smoke test of benchmarks/fuzz_heads.py: a few episodes, every head, resumed without redoing
the episodes already recorded, and a summary that counts them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "fuzz_heads.py"


def _run(work: Path, episodes: int, workers: int = 1) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--episodes", str(episodes), "--max-support", "12"]
    cmd += ["--workers", str(workers)]
    cmd += ["--work", str(work), "--no-progress"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, timeout=600)
    return json.loads((work / "summary.json").read_text(encoding="utf-8"))


def test_fuzz_run_records_resumes_and_summarizes(tmp_path):
    first = _run(tmp_path, 2)
    assert first["settings"]["episodes"] == 2 and not first["failures"]
    with (tmp_path / "records.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('[{"episode": 9, "cut by a ki')  # a line a kill cut short is redone
    second = _run(tmp_path, 3)
    lines = (tmp_path / "records.jsonl").read_text(encoding="utf-8").splitlines()
    episodes = [json.loads(line)[0]["episode"] for line in lines if line.endswith("]")]
    assert episodes == [0, 1, 2]  # episode 0 and 1 were not run again
    assert second["settings"]["episodes"] == 3
    assert set(second["by_head"]) == {"proto", "ridge", "svm_cs", "group_sparse_svm"}
    assert second["head_episodes"] == sum(sum(c.values()) for c in second["by_head"].values())


def test_fuzz_workers_give_the_same_outcomes_as_one_process(tmp_path):
    one = _run(tmp_path / "one", 3)
    two = _run(tmp_path / "two", 3, workers=2)
    assert two["settings"]["workers"] == 2
    assert two["by_head"] == one["by_head"] and two["by_kind"] == one["by_kind"]
    lines = (tmp_path / "two" / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert sorted(json.loads(line)[0]["episode"] for line in lines) == [0, 1, 2]
