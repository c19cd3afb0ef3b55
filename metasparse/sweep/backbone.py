"""The test half of a sweep: heads measured on one trained backbone's features.

``metasparse sweep --checkpoint`` re-solves the group-sparse head at each λ1/λ_max on one
backbone (:func:`run_sweep`); the config mode measures each trained run's own head with
:func:`measure_heads` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.config import Config
from metasparse.data import build_dataset
from metasparse.evaluation import feature_dataset
from metasparse.model import FewShotModel, build_component, resolve_device
from metasparse.sweep.measure import SPARSE, Measured, certified_svm_cs, measure, settings


def measure_heads(
    model: FewShotModel,
    cfg: Config,
    heads: list[tuple[str, str, torch.nn.Module]],
    ways: list[int],
    shots: list[int],
    query: int,
    episodes: int,
    seed: int,
    device: torch.device,
    data_root: str | None = None,
    split: str | None = None,
    episodes_per_batch: int = 1,
    progress: bool = False,
) -> tuple[list[Measured], dict[str, Any]]:
    """Each (label, registry name, head) on the model's features of the test split, for every
    way × shot, all on the same seeded episodes; and what they were measured on."""
    root = data_root if data_root is not None else cfg.data.root
    split = split or cfg.data.test_split
    dataset = build_dataset(cfg.data.name, split, root=root, augment=False, **cfg.data.options)
    for way in ways:
        if way > dataset.num_classes:
            raise ValueError(
                f"--way {way} exceeds the {dataset.num_classes} classes of split {split!r}; "
                "lower --way"
            )
    features = feature_dataset(model, dataset, device)
    out = []
    for way in ways:
        for shot in shots:
            for label, name, head in heads:
                out.append(
                    measure(
                        label,
                        name,
                        head,
                        features,
                        way,
                        shot,
                        query,
                        episodes,
                        seed,
                        device,
                        episodes_per_batch,
                        progress,
                    )
                )
    meta = {
        "dataset": cfg.data.name,
        "split": split,
        "ways": ways,
        "shots": shots,
        "query": query,
        "episodes": episodes,
        "episode_seed": seed,
        "episodes_per_batch": episodes_per_batch,
        "torch": torch.__version__,
    }
    return out, meta


def reference_head(name: str, options: dict[str, Any], svm_cs_solver: str) -> torch.nn.Module:
    """A head to measure: SVM-CS through the certified solver unless ``qpth`` is asked for."""
    from metasparse.heads import build_head

    head = build_component("head", build_head, name, options)
    if name == "svm_cs" and svm_cs_solver == "certified":
        return certified_svm_cs(head)
    return head


def run_sweep(
    checkpoint: str | Path,
    ratios: list[float],
    ways: list[int],
    shots: list[int],
    query: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    baselines: tuple[str, ...] = ("svm_cs", "proto"),
    episodes_per_batch: int = 1,
    data_root: str | None = None,
    split: str | None = None,
    device: str = "auto",
    progress: bool = True,
    svm_cs_solver: str = "certified",
) -> tuple[list[Measured], dict[str, Any]]:
    """The group-sparse head at each ratio (with the checkpoint's other head options when it
    was trained with that head) and the baselines, on one checkpoint's features."""
    dev = resolve_device(device)
    model, cfg = model_from_checkpoint(load_checkpoint(checkpoint, map_location=dev), dev)
    trained = dict(cfg.model.head_options) if cfg.model.head == SPARSE else {}
    heads = [
        (
            label,
            name,
            reference_head(
                name, {**trained, **options} if name == SPARSE else options, svm_cs_solver
            ),
        )
        for label, name, options in settings(ratios, list(baselines))
    ]
    measured, meta = measure_heads(
        model,
        cfg,
        heads,
        ways,
        shots,
        query,
        episodes,
        seed,
        dev,
        data_root,
        split,
        episodes_per_batch,
        progress,
    )
    meta.update(checkpoint=str(checkpoint), svm_cs_solver=svm_cs_solver)
    return measured, meta
