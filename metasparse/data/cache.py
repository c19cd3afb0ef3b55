"""An on-disk cache of decoded image arrays (``.npz``), keyed by the source file's size and mtime.

Decoding thousands of PNGs costs seconds; the decoded uint8 arrays are stored once under
``$METASPARSE_CACHE`` (default ``~/.cache/metasparse``) and reloaded in milliseconds afterwards.
A changed source file (new size or modification time) gets a new key, hence a fresh decode.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from metasparse.utils import atomic_write_bytes


def cache_dir() -> Path:
    """The cache folder: ``$METASPARSE_CACHE`` if set, else ``~/.cache/metasparse``."""
    env = os.environ.get("METASPARSE_CACHE")
    if env:
        return Path(os.path.expanduser(env))
    return Path.home() / ".cache" / "metasparse"


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """``size-mtime_ns`` of a file: changes whenever the file is replaced or rewritten."""
    st = os.stat(path)
    return f"{st.st_size}-{st.st_mtime_ns}"


def cache_path(name: str, key: dict[str, Any]) -> Path:
    """Where the arrays called ``name`` with description ``key`` are (or will be) cached."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{name}-{digest}.npz"


def cached_arrays(
    name: str, key: dict[str, Any], build: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Load the arrays cached under (``name``, ``key``), or ``build()`` them and cache them.

    The arrays must not need pickling (numbers or strings). A corrupt or unreadable cache file is
    rebuilt; a cache folder that cannot be written only costs a warning.
    """
    path = cache_path(name, key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(
                f"ignoring unreadable cache file {path} ({err}); rebuilding", stacklevel=2
            )
    arrays = build()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as err:
        warnings.warn(
            f"could not write the cache file {path} ({err}); set METASPARSE_CACHE to a writable "
            "folder to avoid decoding again next time",
            stacklevel=2,
        )
    return arrays


__all__ = ["cache_dir", "cache_path", "cached_arrays", "file_fingerprint"]
