"""A restricted unpickler for the legacy benchmark pickles (MetaOptNet, learn2learn, CIFAR-100).

Those files were written by Python 2 (``latin1`` strings) and hold nothing but dicts, lists,
strings, numbers and numpy arrays, so the only globals they may name are numpy's array
reconstruction helpers. Anything else — ``os.system``, arbitrary classes — is refused before it
runs, which makes loading a downloaded file safe.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# (module, name) pairs a benchmark pickle may reference. numpy moved ``numpy.core`` to
# ``numpy._core`` in 2.0; pickles written by either carry one or the other.
_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's own ``_reconstruct``, any version


def _reconstruct(cls: type, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's array rebuild, for plain ``ndarray`` only (no subclasses with custom state)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to rebuild an array of class {cls!r}")
    return _NUMPY_RECONSTRUCT(cls, shape, typecode)


def _numpy_scalar(dtype: np.dtype, data: bytes | str | None = None) -> Any:
    """Rebuild a numpy scalar from its dtype and raw bytes (what ``numpy...scalar`` does)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("refusing a numpy scalar of object dtype")
    if isinstance(data, str):
        data = data.encode("latin1")
    if data is None:
        return dtype.type(0)
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """What Python 3 pickles of ``bytes`` at protocol < 3 call: only text encodings are allowed."""
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode(encoding)


def _frombuffer(buf: bytes, dtype: np.dtype, shape: tuple[int, ...], order: str) -> np.ndarray:
    """numpy's protocol-5 array rebuild, restricted to non-object dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("refusing a numpy array of object dtype")
    arr = np.frombuffer(buf, dtype=dtype)
    return arr.reshape(shape, order="F" if order == "F" else "C")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED_GLOBALS[(_core, "_reconstruct")] = _reconstruct
    _ALLOWED_GLOBALS[(_core, "scalar")] = _numpy_scalar
for _num in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED_GLOBALS[(_num, "_frombuffer")] = _frombuffer
_ALLOWED_GLOBALS[("_codecs", "encode")] = _codecs_encode


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED_GLOBALS``; object-dtype arrays are refused."""

    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: benchmark pickles may only hold arrays, "
                "lists, dicts, strings and numbers"
            )
        if (module, name) == ("numpy", "dtype"):
            return _safe_dtype
        return target


def _safe_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` for plain types only (an object dtype could smuggle objects in)."""
    dtype = np.dtype(spec, align=align, copy=copy)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing a numpy array of object dtype")
    return dtype


def _unpickle(fh: io.BufferedIOBase, source: str) -> Any:
    try:
        return _RestrictedUnpickler(fh, encoding="latin1").load()
    except EOFError as exc:
        raise ValueError(
            f"{source} is truncated (the pickle ends early); download or copy it again"
        ) from exc
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{source} cannot be read safely or is corrupt ({exc}); download or copy it again"
        ) from exc
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeError) as exc:
        raise ValueError(
            f"{source} is corrupt ({type(exc).__name__}: {exc}); download or copy it again"
        ) from exc


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with the restricted unpickler (Python 2 strings decoded as latin1).

    Raises:
        ValueError: the bytes are truncated or corrupt, or name a forbidden global.
    """
    return _unpickle(io.BytesIO(data), source)


def load(path: str | os.PathLike[str]) -> Any:
    """Read a legacy pickle file safely, streaming it (no second copy of multi-GB files).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated, corrupt or not a plain-data pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pickle file not found: {path}; check the dataset root, or download the dataset "
            "again (see data/README.md for each reader's layout)"
        )
    with open(path, "rb") as fh:
        return _unpickle(fh, str(path))


def dump(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write plain data (dicts, lists, numpy arrays) as a protocol-2 pickle, atomically.

    Protocol 2 is what the MetaOptNet files use, so the output reads in their code too.
    """
    from metasparse.utils import atomic_write_bytes

    atomic_write_bytes(path, pickle.dumps(obj, protocol=2))
