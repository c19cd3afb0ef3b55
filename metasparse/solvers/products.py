"""The solver's products with the features ``X`` (B, n, p): ``A X``, ``X Wᵀ`` and ``X Xᵀ``,
and the two thin ones of a solver step fused over feature chunks (:func:`left_then_right`).

Large float32 CPU operands go through oneDNN, one task at a time; everything else through
``torch.matmul``. PyTorch sends float32 CPU matmuls to MKL, which is much slower than oneDNN
for the solver's shapes on the benchmark's AMD EPYC: oneDNN runs its AVX-512 float32 kernel
(``ONEDNN_VERBOSE``: ``brg_matmul:avx512_core``), while MKL reaches 58 GFLOP/s on the Gram
matrix (86 on a square 1024 product). 8 tasks, one thread, ms, MKL → oneDNN:

=====================  ================  ================  ================
n × p per task         ``A X`` (K = 5)   ``X Wᵀ`` (K = 5)  ``X Xᵀ``
=====================  ================  ================  ================
75 × 16000 (1.2M)      6.4 → 4.3         6.5 → 3.8         24.5 → 16.7
25 × 16000 (400K)      1.06 → 1.30       1.95 → 1.58       4.2 → 3.2
75 × 2560 (192K)       0.47 → 0.38       0.54 → 0.65       3.9 → 2.7
25 × 2560 (64K)        0.15 → 0.25       0.18 → 0.33       0.58 → 0.52
=====================  ================  ================  ================

Hence oneDNN from ``tuning.THIN_MIN`` entries per task for the thin products and
``tuning.GRAM_MIN`` for the Gram matrix (on two threads: thin products 4.4 → 3.2 and 4.0 → 3.1
ms at 75 × 16000, Gram matrices equal). The whole solver at 15-shot p = 16000: see
``benchmarks/head_speed.md``. The thresholds and their measurements are in :mod:`.tuning`.

The oneDNN call is ``torch.ops.mkldnn._linear_pointwise``, the fp32 inner product PyTorch's
own compiler (Inductor) emits for CPU linear layers; it follows PyTorch's float32 matmul
precision setting like every other matmul. It is private API: if it is missing or fails its
first-use check, a warning is issued once and ``torch.matmul`` is used. ``ONEDNN = False``
(or the environment variable ``METASPARSE_ONEDNN=0`` at import) turns it off.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from metasparse.solvers import tuning

ONEDNN = os.environ.get("METASPARSE_ONEDNN", "1") != "0"
_checked: bool | None = None  # None: not yet tried; then whether the op works


def _linear(a: Tensor, w: Tensor) -> Tensor:
    """``a wᵀ`` for 2-D ``a`` (r, k) and ``w`` (m, k) through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")


def _op_works() -> bool:
    """Whether the oneDNN op exists and agrees with matmul (checked once per process)."""
    global _checked
    if _checked is None:
        try:
            g = torch.Generator().manual_seed(0)
            a, w = torch.randn(3, 40, generator=g), torch.randn(5, 40, generator=g)
            _checked = bool(torch.allclose(_linear(a, w), a @ w.T, rtol=1e-5, atol=1e-5))
            reason = "its result differs from torch.matmul"
        except (AttributeError, RuntimeError, TypeError) as exc:  # missing op, other schema
            _checked, reason = False, f"{type(exc).__name__}: {exc}"
        if not _checked:
            warnings.warn(
                f"metasparse: the oneDNN product is unavailable ({reason}); the solver uses "
                "torch.matmul (correct, slower on some CPUs)",
                RuntimeWarning,
                stacklevel=3,
            )
    return _checked


def _use_onednn(X: Tensor, least: int, *others: Tensor) -> bool:
    """Whether the per-task products with ``X`` (B, n, p) go through oneDNN."""
    if not ONEDNN or X.device.type != "cpu" or X.dtype != torch.float32:
        return False
    if X.shape[1] * X.shape[2] < least or X.stride(2) != 1 or X.stride(1) != X.shape[2]:
        return False  # small, or rows not dense (oneDNN would copy them on every call)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (X, *others)):
        return False  # the op has no autograd formula
    return _op_works()


def thin_onednn(X: Tensor) -> bool:
    """Whether :func:`left` and :func:`right` run through oneDNN for ``X`` (whole products:
    callers that would otherwise split them into chunks keep them whole)."""
    return _use_onednn(X, tuning.THIN_MIN)


def applies(X: Tensor) -> bool:
    """Whether any of the products with ``X`` goes through oneDNN."""
    return _use_onednn(X, min(tuning.THIN_MIN, tuning.GRAM_MIN))


def left(A: Tensor, X: Tensor, out: Tensor | None = None) -> Tensor:
    """``A X`` (B, m, p) for ``A`` (B, m, n) and ``X`` (B, n, p); written to ``out`` if given."""
    if not _use_onednn(X, tuning.THIN_MIN, A):
        return torch.matmul(A, X) if out is None else torch.bmm(A, X, out=out)
    A = A.contiguous()
    if out is None:
        out = A.new_empty(A.shape[0], A.shape[1], X.shape[2])
    for i in range(X.shape[0]):
        out[i] = _linear(A[i], X[i].T)
    return out


def right(X: Tensor, W: Tensor) -> Tensor:
    """``X Wᵀ`` (B, n, m) for ``X`` (B, n, p) and ``W`` (B, m, p)."""
    if not _use_onednn(X, tuning.THIN_MIN, W):
        return X @ W.transpose(1, 2)
    W = W.contiguous()
    return torch.stack([_linear(X[i], W[i]) for i in range(X.shape[0])])


def gram(X: Tensor) -> Tensor:
    """``X Xᵀ`` (B, n, n), in ``X``'s dtype."""
    if not _use_onednn(X, tuning.GRAM_MIN):
        return X @ X.transpose(1, 2)
    return torch.stack([_linear(X[i], X[i]) for i in range(X.shape[0])])


def _fuse_chunk(X: Tensor) -> int | None:
    """The feature chunk :func:`left_then_right` uses for ``X`` (B, n, p); None: no chunks."""
    B, n, p = X.shape
    chunk = 1 << max(7, round(math.log2(tuning.CHUNK_BYTES / max(B * n * X.element_size(), 1))))
    if X.device.type != "cpu" or X.nbytes <= tuning.FUSE_BYTES or p <= 2 * chunk:
        return None
    if torch.get_num_threads() > 1:  # see tuning.FUSE_BYTES
        return None
    return chunk


def left_then_right(
    X: Tensor, A: Tensor, fn: Callable[[Tensor, slice], Tensor], out_left: Tensor | None = None
) -> Tensor:
    """``X fn(A X)ᵀ`` (B, n, m) for ``X`` (B, n, p), ``A`` (B, k, n) and a map ``fn`` that acts
    feature by feature: ``fn(A X[:, :, c], c)`` returns the (B, m, |c|) columns ``c``. With
    ``out_left`` (B, k, p), ``A X`` is also written there.

    Both products of a solver step (or of a Hessian product) read all of ``X``; they are thin
    (k, m ≤ 2K), so each costs several times ``X``'s memory traffic. On the CPU they run chunk
    by chunk over the features, so that the second reads its chunk of ``X`` from cache (about
    30% less time at 15-shot, p = 16000; see ``tuning.CHUNK_BYTES``). Other devices, an ``X`` that
    fits in the last-level cache, and tasks large enough for oneDNN's products (faster whole
    than MKL's in chunks: 15-shot p = 16000, fwd+bwd 0.93) run the two products whole.
    """
    p = X.shape[2]
    chunk = None if thin_onednn(X) else _fuse_chunk(X)
    if chunk is None:
        return right(X, fn(left(A, X, out=out_left), slice(None)))
    out = None
    for a in range(0, p, chunk):
        c = slice(a, min(a + chunk, p))
        Xc = X[:, :, c]
        Mc = A @ Xc if out_left is None else torch.bmm(A, Xc, out=out_left[:, :, c])
        Wc = fn(Mc, c).transpose(1, 2)
        out = Xc @ Wc if out is None else out.baddbmm_(Xc, Wc)
    return out


def fuses(X: Tensor) -> bool:
    """Whether the two products of a solver step with ``X`` gain from one
    :func:`left_then_right`: where it runs chunk by chunk, or through oneDNN (its products
    then carry the new point's scores as K more columns)."""
    return _fuse_chunk(X) is not None or thin_onednn(X)
