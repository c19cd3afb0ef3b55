"""Mixed precision and compilation of the backbone: the choices, their checks, the loss scaler.

The backbone may run under ``torch.autocast`` to bfloat16 or float16 (``model.backbone_precision``)
while its weights, the optimizer and the head stay in float32: the features are cast back to
float32 at the backbone/head boundary, since a certified duality gap of 1e-5 is far below half
precision's resolution. float16 needs loss scaling (:func:`make_scaler`); bfloat16 has float32's
range and does not.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def check_precision(precision: str) -> None:
    """Raise a ValueError naming the choices unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"config key 'model.backbone_precision' must be one of {', '.join(PRECISIONS)}, got "
            f"{precision!r}; use bfloat16 for mixed precision on CPUs and recent GPUs, float16 "
            "on CUDA (with loss scaling), or float32 for none"
        )


def backbone_autocast(precision: str, device_type: str) -> AbstractContextManager[Any]:
    """The context the backbone runs in: ``torch.autocast`` to bfloat16/float16, or nothing
    for float32 (so the default path is the plain one, bitwise)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def check_autocast(precision: str, device: torch.device, loss_scaling: bool = True) -> None:
    """Raise a ValueError naming the fix unless ``device`` can run the backbone in
    ``precision`` (float16 on CPUs needs a torch whose CPU autocast, and for training with
    ``loss_scaling`` its GradScaler, support it; bfloat16 on GPUs needs one that computes in it)."""
    check_precision(precision)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"model.backbone_precision=bfloat16 but {torch.cuda.get_device_name(device)} does not "
            "support bfloat16; use float16 (with loss scaling) or float32"
        )
    problem = None
    with warnings.catch_warnings(record=True) as caught:  # an unsupported dtype only warns
        warnings.simplefilter("always")
        try:
            with torch.autocast(device.type, dtype=dtype):
                pass
        except RuntimeError as exc:
            problem = str(exc).splitlines()[0]
    if problem is None:
        problem = next((str(w.message) for w in caught if "autocast" in str(w.message)), None)
    scaler = hasattr(torch.amp, "GradScaler")
    if problem is None and dtype == torch.float16 and loss_scaling and not scaler:
        problem = "float16 needs loss scaling and this torch has no torch.amp.GradScaler"
    if problem is not None:
        fix = "float16 needs CUDA here; bfloat16 works on CPUs" if dtype == torch.float16 else ""
        raise ValueError(
            f"model.backbone_precision={precision} is not supported on {device.type} by torch "
            f"{torch.__version__} ({problem}); {fix or 'use float32'}"
        )


def check_compile(device: torch.device) -> None:
    """Raise a ValueError naming the fix when ``torch.compile`` cannot build for ``device``:
    Inductor compiles CPU kernels with the C++ compiler ``$CXX`` (default g++, macOS clang++)."""
    if device.type != "cpu" or sys.platform == "win32":
        return  # GPU kernels are Triton's; its absence is torch's own error at the first step
    cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        raise ValueError(
            f"model.compile=true on the CPU needs a C++ compiler for torch.compile's Inductor "
            f"backend, and {cxx!r} is not on PATH; install it (e.g. apt-get install g++), set "
            "CXX to one, or set model.compile=false"
        )


def check_backbone_options(model_cfg: Any, device: torch.device) -> None:
    """:func:`check_autocast` and (with ``model.compile``) :func:`check_compile` of a
    :class:`metasparse.config.ModelConfig` for training on ``device``."""
    check_autocast(model_cfg.backbone_precision, device)
    if model_cfg.compile:
        check_compile(device)


# Below this loss scale a float16 step with non-finite gradients stops training instead of being
# skipped: the gradients overflow even unscaled, so the scaler cannot fix them (bfloat16 can).
MIN_LOSS_SCALE = 1.0


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler float16 training needs on ``device``; None for float32 and bfloat16."""
    if precision != "float16":
        return None
    return torch.amp.GradScaler(device.type)


def scaler_skips(scaler: torch.amp.GradScaler | None, loss: torch.Tensor) -> bool:
    """Whether a step whose gradients are not finite is one ``scaler`` skips (and retries at a
    lower scale) rather than a failure: the loss is finite and the scale not below
    :data:`MIN_LOSS_SCALE`. Without a scaler (float32, bfloat16) nothing is skipped."""
    return (
        scaler is not None and bool(torch.isfinite(loss)) and scaler.get_scale() >= MIN_LOSS_SCALE
    )


def scaler_metrics(scaler: torch.amp.GradScaler | None, skipped: bool) -> dict[str, float]:
    """What a step logs about loss scaling (``amp/…``): the scale it ran at and whether the
    scaler skipped it; nothing without a scaler."""
    if scaler is None:
        return {}
    return {"amp/loss_scale": float(scaler.get_scale()), "amp/skipped": float(skipped)}


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    check: Callable[[], bool],
) -> dict[str, float]:
    """``check()`` the gradients (it raises to stop training, or returns whether the scaler
    skips the step), then step the optimizer, through ``scaler`` when there is one (float16:
    gradients unscaled first, an overflowed step skipped and the scale lowered). Returns
    :func:`scaler_metrics`."""
    if scaler is None:
        check()
        optimizer.step()
        return {}
    scaler.unscale_(optimizer)
    amp = scaler_metrics(scaler, check())
    scaler.step(optimizer)
    scaler.update()
    return amp
