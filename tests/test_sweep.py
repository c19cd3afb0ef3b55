"""``metasparse sweep`` on a tiny glyphs checkpoint: one row per setting × shot on the same
episodes, paired differences to SVM-CS, per-episode sparsity, the files it writes, bad input."""

from __future__ import annotations

import csv
import json

import pytest

from metasparse.cli import main


def test_sweep_writes_paired_rows_report_and_plots(tiny_group_sparse_checkpoint, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--checkpoint",
        str(tiny_group_sparse_checkpoint),
        "--ratios",
        "0",
        "0.9",
        "--shot",
        "1",
        "3",
        "--query",
        "3",
        "--episodes",
        "12",
        "--output",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = data["rows"]
    labels = ["group_sparse_svm@0", "group_sparse_svm@0.9", "svm_cs", "proto"]
    assert [(r["setting"], r["shot"]) for r in rows] == [(s, k) for k in (1, 3) for s in labels]
    for shot in (1, 3):
        by = {r["setting"]: r for r in rows if r["shot"] == shot}
        assert all(r["episodes"] == 12 for r in by.values())
        assert by["svm_cs"]["diff_vs_svm_cs"] == 0.0
        # the paired difference is the mean of per-episode differences on the same episodes
        gs = by["group_sparse_svm@0.9"]
        diffs = [
            a - b
            for a, b in zip(
                gs["per_episode_accuracy"], by["svm_cs"]["per_episode_accuracy"], strict=True
            )
        ]
        assert gs["diff_vs_svm_cs"] == pytest.approx(sum(diffs) / len(diffs))
        # λ1 near λ_max leaves features out; at 0 the head uses (nearly) all of them
        assert gs["features_used_mean"] < by["group_sparse_svm@0"]["features_used_mean"]
        assert gs["converged"] == 1.0 and by["proto"]["features_used_mean"] is None
    with (out / "results.csv").open(encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## 5-way 1-shot" in report and "**(best)**" in report
    assert (out / "accuracy_vs_ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "accuracy_vs_features.png").is_file()


def test_sweep_rejects_bad_ratios_and_too_many_ways(tiny_group_sparse_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "sweep",
                "--checkpoint",
                str(tiny_group_sparse_checkpoint),
                "--ratios",
                "1.5",
                "--output",
                "x",
            ]
        )
    assert "must lie in [0, 1]" in capsys.readouterr().err
    argv = [
        "sweep",
        "--checkpoint",
        str(tiny_group_sparse_checkpoint),
        "--way",
        "500",
        "--output",
        str(tmp_path),
    ]
    assert main([*argv, "--no-progress"]) == 2
    assert "lower --way" in capsys.readouterr().err
