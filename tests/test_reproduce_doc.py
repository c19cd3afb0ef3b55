"""docs/reproduce.md: every config, script and results file it names exists (and configs load),
so that the recipes do not drift from the tree."""

from __future__ import annotations

import re
from pathlib import Path

from metasparse.config import load_config

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reproduce.md"


def test_reproduce_doc_names_only_what_exists():
    text = DOC.read_text(encoding="utf-8")
    configs = set(re.findall(r"configs/[\w./-]+\.yaml", text))
    scripts = set(re.findall(r"benchmarks/[\w-]+\.py", text))
    results = {f"benchmarks/results/{n}" for n in re.findall(r"results/([\w.-]+\.json)", text)}
    assert len(configs) >= 4 and len(scripts) >= 2 and len(results) >= 3
    missing = sorted(p for p in configs | scripts | results if not (REPO / p).is_file())
    assert not missing, f"docs/reproduce.md names files that do not exist: {missing}"
    for path in configs:
        load_config(REPO / path)  # unknown keys would raise
