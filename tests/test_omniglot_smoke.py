"""Real-data smoke test (default CI run): meta-train a few dozen steps on Omniglot, then meta-test.

Covers the whole user path on real images: the CLI, the Omniglot reader, training with the
group-sparse SVM head (its statistics reach TensorBoard), `metasparse test` and `omniglot-runs`.
"""

from __future__ import annotations

import json

import pytest

from metasparse.cli import main


@pytest.mark.realdata
@pytest.mark.parametrize("head", ["group_sparse_svm", "proto"])
def test_omniglot_train_test_and_runs(shared_data, tmp_path, head):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from metasparse.data.omniglot_runs import write_runs

    root = shared_data / "omniglot"
    if not (root / "images_background.zip").is_file():
        pytest.skip(f"Omniglot zips not found in {root}")
    run = tmp_path / head
    rc = main(
        [
            "train",
            "--config",
            f"configs/omniglot/conv4_{head}.yaml",
            "--no-progress",
            f"data.root={root}",
            f"output_dir={run}",
            "train.way=5",
            "train.shot=1",
            "train.query=5",
            "train.episodes_per_batch=2",
            "train.batches_per_epoch=15",
            "train.epochs=2",
            "train.log_every=5",
            "val.episodes=40",
        ]
    )
    assert rc == 0
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    assert len(history) == 2
    assert history[-1]["val_accuracy"] > 40.0  # 5-way 1-shot, chance 20%

    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()
    tags = set(tb.Tags()["scalars"])
    assert {"train/loss", "val/accuracy", "time/head", "time/backbone", "time/data"} <= tags
    if head == "group_sparse_svm":
        assert {"head/features_used", "head/gap", "head/iterations"} <= tags, tags
        gaps = [e.value for e in tb.Scalars("head/gap")]
        assert max(gaps) <= 1e-4

    out = tmp_path / "results.json"
    rc = main(
        [
            "test",
            "--checkpoint",
            str(run / "checkpoints/best.pt"),
            "--way",
            "5",
            "--shot",
            "1",
            "--episodes",
            "30",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    (result,) = json.loads(out.read_text(encoding="utf-8"))
    assert result["accuracy"] > 40.0 and result["head"] == head and result["ci95"] > 0

    runs_dir = tmp_path / "runs"
    write_runs(runs_dir, root, n_runs=3, ways=20, seed=1)
    out_runs = tmp_path / "runs.json"
    rc = main(
        [
            "omniglot-runs",
            "--checkpoint",
            str(run / "checkpoints/best.pt"),
            "--runs-dir",
            str(runs_dir),
            "--output",
            str(out_runs),
        ]
    )
    assert rc == 0
    runs = json.loads(out_runs.read_text(encoding="utf-8"))
    assert len(runs["per_run"]) == 3
    assert runs["error_rate"] < 90.0  # chance is 95% error at 20-way
