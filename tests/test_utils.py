"""metasparse.utils: atomic JSON writes."""

from __future__ import annotations

import json

from metasparse.utils import atomic_write_json


def test_atomic_write_json_keeps_non_ascii_literal(tmp_path):
    # results files name λ1/λ_max: written as the character itself, in UTF-8, not as \u03bb
    obj = {"λ1/λ_max": 0.1, "head": "group_sparse_svm", "notes": ["λ", "±"]}
    path = tmp_path / "sub" / "results.json"
    atomic_write_json(path, obj)
    raw = path.read_bytes()
    assert "λ".encode() in raw and b"\\u03bb" not in raw
    assert json.loads(raw.decode("utf-8")) == obj
    assert raw.endswith(b"\n")
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary file left
