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
