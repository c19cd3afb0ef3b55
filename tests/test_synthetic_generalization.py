"""The generalization study: sparse heads win on disentangled features, Ridge ignores rotations."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from metasparse.cli import main
from metasparse.synthetic.generalization import (
    CSV_COLUMNS,
    GeneralizationConfig,
    run_generalization,
)


@pytest.fixture(scope="module")
def tiny_rows() -> list[dict]:
    cfg = GeneralizationConfig(
        n_factors=40, ratios=(0.05, 0.8), sizes=(20, 60), n_test=500, seeds=3, n_alphas=10
    )
    rows, per_seed = run_generalization(cfg, progress=False)
    assert len(per_seed) == 3 * 2 * 2 * 2 * 3
    return rows


def _get(rows: list[dict], ratio: float, n: int, rep: str, est: str) -> dict:
    (row,) = [
        r
        for r in rows
        if (r["l_over_m"], r["n_samples"], r["representation"], r["estimator"])
        == (ratio, n, rep, est)
    ]
    return row


def test_rows_have_the_documented_columns(tiny_rows: list[dict]) -> None:
    assert all(tuple(r) == CSV_COLUMNS for r in tiny_rows)
    assert len(tiny_rows) == 2 * 2 * 2 * 3
    assert all(r["r2_se"] >= 0 for r in tiny_rows)


def test_ridge_is_invariant_to_an_orthogonal_mixing(tiny_rows: list[dict]) -> None:
    for ratio in (0.05, 0.8):
        for n in (20, 60):
            dis = _get(tiny_rows, ratio, n, "disentangled", "ridge")["r2_mean"]
            ent = _get(tiny_rows, ratio, n, "entangled", "ridge")["r2_mean"]
            assert dis == pytest.approx(ent, abs=1e-8)


def test_lasso_wins_on_disentangled_sparse_tasks(tiny_rows: list[dict]) -> None:
    dis = _get(tiny_rows, 0.05, 20, "disentangled", "lasso")["r2_mean"]
    ent = _get(tiny_rows, 0.05, 20, "entangled", "lasso")["r2_mean"]
    ridge = _get(tiny_rows, 0.05, 20, "disentangled", "ridge")["r2_mean"]
    assert dis > 0.6
    assert dis > ent + 0.3
    assert dis > ridge + 0.3


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="ratios"):
        GeneralizationConfig(ratios=(0.0,))
    with pytest.raises(ValueError, match="cv_folds"):
        GeneralizationConfig(sizes=(3,))
    with pytest.raises(ValueError, match="mixing"):
        GeneralizationConfig(mixing="rotation")


def test_cli_generalization_writes_csv_and_plot(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen"
    rc = main(
        [
            "synthetic", "generalization", "--output", str(out), "--seeds", "2",
            "--n-factors", "20", "--ratios", "0.1", "--sizes", "10,30", "--n-test", "100",
            "--n-alphas", "5", "--mixing", "invertible",
        ]
    )  # fmt: skip
    assert rc == 0
    with open(out / "results.csv") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 2 * 2 * 3
    assert (out / "r2_vs_n.png").stat().st_size > 10_000
    assert "lasso-dis" in capsys.readouterr().out
