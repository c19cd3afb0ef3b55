"""The bi-level disentanglement study: a tiny run raises MCC; heads, CLI and outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metasparse.cli import main
from metasparse.synthetic.disentangle import (
    DEFAULT_SETTINGS,
    BilevelConfig,
    Setting,
    ridge_fit,
    train_bilevel,
)

_TINY = {"n_factors": 3, "mixing": "linear", "tasks_per_step": 16, "eval_samples": 500}


def test_tiny_bilevel_lasso_run_raises_mcc() -> None:
    cfg = BilevelConfig(steps=40, lr=1e-2, hidden=32, **_TINY)
    out = train_bilevel(cfg, DEFAULT_SETTINGS[0], "lasso", 0.1, seed=0)
    assert out["mcc"] > out["mcc_init"] + 0.1, out
    assert 0.0 < out["active_fraction"] < 1.0  # the inner heads are genuinely sparse
    assert np.isfinite(out["query_loss"])


def test_zero_steps_leaves_the_encoder_at_initialization() -> None:
    cfg = BilevelConfig(steps=0, **_TINY)
    a = train_bilevel(cfg, DEFAULT_SETTINGS[0], "lasso", 0.1, seed=3)
    b = train_bilevel(cfg, DEFAULT_SETTINGS[0], "ridge", 0.1, seed=3)
    assert a["mcc"] == pytest.approx(a["mcc_init"]) == pytest.approx(b["mcc_init"])


def test_ridge_fit_matches_normal_equations() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 9, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(4, 9, 2, generator=g, dtype=torch.float64)
    W = ridge_fit(X, Y, ratio=0.5)
    for t in range(4):
        G = X[t].T @ X[t] / 9
        alpha = 0.5 * torch.trace(G) / 3
        ref = torch.linalg.solve(G + alpha * torch.eye(3, dtype=torch.float64), X[t].T @ Y[t] / 9)
        torch.testing.assert_close(W[t], ref)


def test_unknown_head_and_bad_config_raise() -> None:
    with pytest.raises(ValueError, match="inner head"):
        train_bilevel(BilevelConfig(steps=0, **_TINY), DEFAULT_SETTINGS[0], "knn", 0.1, 0)
    with pytest.raises(ValueError, match="tasks_per_step"):
        BilevelConfig(tasks_per_step=0)


def test_cli_disentangle_writes_csv_json_plot_and_tensorboard(tmp_path: Path) -> None:
    out = tmp_path / "dis"
    rc = main(
        [
            "synthetic", "disentangle", "--output", str(out), "--seeds", "1", "--ratios", "0.1",
            "--steps", "3", "--settings", "independent", "violated", "--n-factors", "4",
            "--eval-samples", "200", "--coupled", "0-1",
        ]
    )  # fmt: skip
    assert rc == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["setting"], r["head"]) for r in rows] == [
        ("independent", "lasso"),
        ("violated", "lasso"),
        ("independent", "ridge"),
        ("violated", "ridge"),
    ]
    assert rows[1]["coupled"] == "0-1" and rows[1]["mcc_coupled"] != "nan"
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(data["runs"]) == 4 and data["config"]["n_factors"] == 4
    assert (out / "mcc_vs_ratio.png").stat().st_size > 10_000
    assert len(list((out / "tensorboard").iterdir())) == 4


def test_cli_rejects_coupling_beyond_the_factors(tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "synthetic", "disentangle", "--output", str(tmp_path), "--n-factors", "3",
            "--coupled", "2-5", "--settings", "violated", "--steps", "1",
        ]
    )  # fmt: skip
    assert rc == 2
    assert "couples factor 5" in capsys.readouterr().err


def test_setting_coupling_is_used_by_the_task_stream() -> None:
    cfg = BilevelConfig(steps=0, **_TINY)
    out = train_bilevel(cfg, Setting("violated", 0.0, ((0, 2),)), "ridge", 1.0, seed=0)
    assert out["coupled"] == "0-2" and 0.0 <= out["mcc_coupled"] <= 1.0


def test_classification_variant_uses_the_group_sparse_svm_head(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_outputs >= 2"):
        train_bilevel(BilevelConfig(steps=1, **_TINY), DEFAULT_SETTINGS[0], "svm", 0.1, 0)
    cfg = BilevelConfig(steps=3, n_outputs=3, **(_TINY | {"n_factors": 4}))
    out = train_bilevel(cfg, DEFAULT_SETTINGS[0], "svm", 0.1, seed=0)
    assert out["head"] == "svm" and out["lam_ratio"] == 0.1
    assert np.isfinite(out["query_loss"]) and 0.0 < out["active_fraction"] <= 1.0
    assert out["mcc"] != out["mcc_init"]  # the encoder moved through the SVM's implicit gradient
