"""Small shared helpers: seeding, atomic writes, confidence intervals."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike[str], write: Any) -> None:
    """``write(fh)`` into a temporary file beside ``path``, fsync it, rename it over ``path``
    and fsync the folder: a crash leaves the old file or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (indented, trailing newline) as UTF-8, non-ASCII characters kept
    literal so results files read ``λ1`` rather than ``\\u03bb1``."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through an fsync'd temporary file and a rename."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def positive_int(text: str) -> int:
    """Argparse type for counts that must be at least 1 (episodes, batches, threads, ways):
    refused at parse time with a message naming the fix, not mid-run."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, got {text!r}: give 1 or more"
        )
    return value


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 · std / sqrt(n)`` (MetaOptNet's convention)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), 1.96 * std / math.sqrt(arr.size)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite; one reduction instead of an elementwise mask.

    A NaN or Inf anywhere makes the sum non-finite; a non-finite sum of finite entries (an
    overflow) is re-checked elementwise, so the answer is exact. ``isfinite(t).all()`` is
    ~20x slower on CPU for a (8, 75, 16000) feature tensor.
    """
    if t.numel() == 0 or not t.is_floating_point():
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def cpu_name() -> str:
    """The processor's model name (e.g. "AMD EPYC 7B13"), for benchmark records: speed-path
    choices and round-off differ between CPU models, and ``platform.processor()`` says only
    "x86_64" on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
