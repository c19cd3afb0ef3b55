"""Meta-test evaluation: fixed episodes, precomputed features equal per-episode embedding."""

from __future__ import annotations

import pytest
import torch

from metasparse.config import from_dict
from metasparse.data import build_dataset
from metasparse.evaluation import evaluate
from metasparse.model import FewShotModel
from metasparse.utils import mean_ci95


@pytest.mark.parametrize("head", ["proto", "ridge"])
def test_precomputed_features_give_identical_results(head):
    dataset = build_dataset("glyphs", "val")
    cfg = from_dict(
        {
            "model": {
                "backbone": "conv4",
                "head": head,
                "backbone_options": {"hidden": 8, "out_channels": 8},
            }
        }
    )
    model = FewShotModel.from_config(cfg.model, in_channels=1)
    a = evaluate(model, dataset, 5, 1, 4, 12, seed=7, episodes_per_batch=4, precompute=False)
    b = evaluate(model, dataset, 5, 1, 4, 12, seed=7, episodes_per_batch=4, precompute=True)
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
    assert a["episodes"] == b["episodes"] == 12
    c = evaluate(model, dataset, 5, 1, 4, 12, seed=8, episodes_per_batch=4)
    assert c["accuracy"] != a["accuracy"] or c["ci95"] != a["ci95"]  # another seed, other tasks
    assert model.training  # evaluate restores the mode it found


def test_mean_ci95_matches_formula():
    values = [50.0, 60.0, 70.0, 80.0]
    mean, ci = mean_ci95(values)
    std = torch.tensor(values, dtype=torch.float64).std().item()
    assert mean == 65.0 and ci == pytest.approx(1.96 * std / 2.0)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_way_larger_than_classes_is_a_clear_error():
    dataset = build_dataset("glyphs", "val")
    cfg = from_dict({"model": {"backbone": "conv4", "head": "proto"}})
    model = FewShotModel.from_config(cfg.model, in_channels=1)
    with pytest.raises(ValueError, match="N-way"):
        evaluate(model, dataset, dataset.num_classes + 1, 1, 1, 2, seed=0)
