"""The command line, end to end on the built-in data, plus its error messages."""

from __future__ import annotations

import json

import pytest

from metasparse.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "test", "omniglot-runs", "demo", "data", "synthetic"):
        assert cmd in out


def test_train_then_test_writes_results_json(tmp_path, capsys):
    run = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--no-progress",
            "name=cli",
            f"output_dir={run}",
            "train.way=5",
            "train.shot=1",
            "train.query=2",
            "train.episodes_per_batch=2",
            "train.batches_per_epoch=3",
            "train.epochs=1",
            "val.episodes=4",
            "model.backbone_options.hidden=8",
            "model.backbone_options.out_channels=8",
        ]
    )
    assert rc == 0
    out = tmp_path / "results.json"
    rc = main(
        [
            "test",
            "--checkpoint",
            str(run / "checkpoints/best.pt"),
            "--way",
            "5",
            "3",
            "--shot",
            "1",
            "2",
            "--query",
            "3",
            "--episodes",
            "6",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert len(results) == 4
    for r in results:
        assert {"way", "shot", "query", "episodes", "accuracy", "ci95", "head"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 100.0 and r["episodes"] == 6 and r["head"] == "proto"
    table = capsys.readouterr().out
    assert "±" in table


def test_errors_are_one_line_and_named(tmp_path, capsys):
    assert main(["train", "--no-progress", "train.epoch=2"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    assert main(["test", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    rc = main(
        [
            "train",
            "--no-progress",
            f"output_dir={tmp_path}/x",
            "data.name=omniglot",
            f"data.root={tmp_path}/nothing-here",
        ]
    )
    assert rc == 2
    assert "images_background" in capsys.readouterr().err


def test_parser_builds():
    assert build_parser().prog == "metasparse"


def test_demo_trains_tests_and_reports(tmp_path, capsys):
    # the demo's default heads, shortened: what `metasparse demo` runs, end to end
    from metasparse.demo import DEMO_HEADS

    out = tmp_path / "demo"
    rc = main(["demo", "--steps", "4", "--episodes", "10", "--output", str(out), "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {(r["head"], r["shot"]) for r in results} == {(h, s) for h in DEMO_HEADS for s in (1, 5)}
    assert set(DEMO_HEADS) == {"proto", "svm_cs", "group_sparse_svm"}
    text = capsys.readouterr().out
    assert "5-way 1-shot" in text and "chance 20.0%" in text
    # a second demo in the same folder starts afresh instead of refusing
    assert (
        main(
            [
                "demo",
                "--heads",
                "ridge",
                "--steps",
                "2",
                "--episodes",
                "4",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "metasparse", "train", "train.epoch=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "did you mean 'epochs'" in res.stderr


def test_bare_resume_followed_by_an_override_resumes_the_last_checkpoint(tmp_path, capsys):
    # argparse would read `--resume train.epochs=2` as `--resume` with the value
    # "train.epochs=2" and reject it; the CLI reads it as `--resume last train.epochs=2`.
    tiny = [
        "--no-progress",
        f"output_dir={tmp_path / 'run'}",
        "train.way=3",
        "train.shot=1",
        "train.query=1",
        "train.episodes_per_batch=1",
        "train.batches_per_epoch=2",
        "val.episodes=2",
        "model.backbone_options.hidden=4",
        "model.backbone_options.out_channels=4",
    ]
    assert main(["train", *tiny, "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "train.epochs=2", *tiny]) == 0
    summary = json.loads(capsys.readouterr().out.split("\nbest validation")[0])
    assert summary["epoch"] == 2
    assert build_parser().parse_args(["train", "--resume", "previous"]).resume == "previous"
