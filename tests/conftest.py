"""Shared fixtures: real-data location, determinism."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """The real-data root: ``$METASPARSE_SHARED_DATA``, else ``../shared/data`` beside the repo."""
    return Path(os.environ.get("METASPARSE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The real-data root; skips the test with a clear message when it is absent."""
    root = shared_data_root()
    if not root.is_dir():
        pytest.skip(
            f"real data not found at {root}; set METASPARSE_SHARED_DATA to the folder holding "
            "omniglot/ and miniimagenet/"
        )
    return root


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    """Values compared exactly need one thread and a fixed seed (batched LU is unsafe otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_group_sparse_checkpoint(tmp_path_factory) -> Path:
    """best.pt of a few steps of Conv-4 (8 channels) with the group-sparse head on the built-in
    glyphs: a real checkpoint for the tools that read one (sweep, head_share)."""
    from metasparse.config import from_dict
    from metasparse.training import train

    out = tmp_path_factory.mktemp("tiny_group_sparse")
    cfg = from_dict(
        {
            "name": "tiny",
            "output_dir": str(out / "run"),
            "data": {"name": "glyphs", "augment": False},
            "model": {
                "backbone": "conv4",
                "backbone_options": {"hidden": 8, "out_channels": 8},
                "head": "group_sparse_svm",
                "head_options": {"lam_ratio": 0.1},
            },
            "train": {
                "way": 5,
                "shot": 2,
                "query": 3,
                "episodes_per_batch": 2,
                "batches_per_epoch": 3,
                "epochs": 1,
            },
            "val": {"way": 5, "shot": 1, "query": 2, "episodes": 2},
        }
    )
    train(cfg, progress=False)
    return cfg.run_dir / "checkpoints" / "best.pt"
