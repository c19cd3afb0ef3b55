"""Checkpoints: plain tensors and Python values only, written atomically, read with weights_only.

A checkpoint file wraps the serialized state with its SHA-256 (format v2), so a file damaged on
disk is detected on load rather than read as wrong weights. ``keep_previous`` keeps the file it
replaces as ``previous.pt``, which ``metasparse train --resume previous`` continues from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from metasparse.config import Config, from_dict
from metasparse.model import FewShotModel
from metasparse.precision import check_autocast
from metasparse.utils import atomic_torch_save

FORMAT = "metasparse-checkpoint-v1"  # the state dict's tag (v1 files are the bare state)
WRAPPED = "metasparse-checkpoint-v2"  # {format, sha256, payload: the v1 state's bytes}
PREVIOUS = "previous.pt"


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> None:
    """Write a checkpoint atomically with its checksum (a kill mid-write leaves the previous
    file intact); with ``keep_previous`` the file replaced is kept as ``previous.pt`` beside."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    data = buf.getvalue()
    wrapped = {
        "format": WRAPPED,
        "sha256": hashlib.sha256(data).hexdigest(),
        "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8),
    }
    path = Path(path)
    if keep_previous and path.is_file():
        os.replace(path, path.with_name(PREVIOUS))
    atomic_torch_save(wrapped, path)


def _unwrap(p: Path, outer: Any, map_location: str | torch.device) -> Any:
    """The state inside a v2 file, after checking its checksum."""
    data = outer["payload"].numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        previous = p.with_name(PREVIOUS)
        hint = (
            f"; {previous} holds the one before it: resume with metasparse train --resume "
            "previous, or test that file"
            if previous.is_file() and p.name != PREVIOUS
            else "; restore it from a copy, or retrain"
        )
        raise ValueError(f"checkpoint {p} is corrupt (its SHA-256 checksum does not match){hint}")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raise ValueError when it is not one of ours."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint {p} not found; training writes <run_dir>/checkpoints/best.pt and last.pt"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(ckpt, dict) and ckpt.get("format") == WRAPPED:
            ckpt = _unwrap(p, ckpt, map_location)
        elif torch.device(map_location).type != "cpu":  # a v1 file: read it where asked
            ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        reason = (str(exc).splitlines() or [""])[0][:200]
        if "weights_only" in str(exc):  # torch's advice to unpickle anything: not for us
            reason = "it holds objects other than tensors and plain data"
        raise ValueError(
            f"checkpoint {p} is unreadable ({type(exc).__name__}: {reason});"
            " it may be truncated or not a metasparse checkpoint — use best.pt/last.pt of a run"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(
            f"{p} is a torch file but not a metasparse checkpoint (expected format {FORMAT!r}); "
            "give best.pt or last.pt from a run's checkpoints/ folder"
        )
    missing = [k for k in MODEL_KEYS if k not in ckpt]
    if missing:
        raise ValueError(
            f"checkpoint {p} lacks {', '.join(missing)}: it was not written by metasparse's "
            "training (or was edited); use best.pt/last.pt of a run"
        )
    return ckpt


MODEL_KEYS = ("config", "in_channels", "model")  # what testing a checkpoint needs


def load_model_state(model: torch.nn.Module, state: dict[str, Any], where: str) -> None:
    """``model.load_state_dict(state)``, a mismatch raised as a ValueError naming the fix. Keys
    of a module wrapped by ``torch.compile`` (``…_orig_mod.…``) load as the plain module's."""
    if any("_orig_mod." in k for k in state):
        state = {k.replace("_orig_mod.", ""): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:300]
        raise ValueError(
            f"the weights in {where} do not fit the model its config builds ({first}); the "
            "checkpoint was written by another version of the model or its config was edited: "
            "restore its config, or test it with the metasparse version that wrote it"
        ) from exc


def model_from_checkpoint(
    ckpt: dict[str, Any], device: torch.device | str = "cpu"
) -> tuple[FewShotModel, Config]:
    """Rebuild the model and its config from a loaded checkpoint (eval mode), in the backbone
    precision it trained in; not compiled (``model.compile`` is a training option)."""
    cfg = from_dict(ckpt["config"])
    check_autocast(cfg.model.backbone_precision, torch.device(device), loss_scaling=False)
    model_cfg = dataclasses.replace(cfg.model, compile=False)
    model = FewShotModel.from_config(model_cfg, in_channels=int(ckpt["in_channels"]))
    load_model_state(model, ckpt["model"], "the checkpoint")
    return model.to(device).eval(), cfg


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key not in ("options",):
            keys += _config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.append(prefix + key)
    return keys


# Keys a resumed run may change: how long to train, and where/how to log.
_RESUMABLE_CHANGES = {
    "train.epochs",
    "train.log_every",
    "train.checkpoint_every",
    "train.checkpoint_minutes",
    "train.device",
    "model.channels_last",
    "model.compile",
    "data.num_workers",
    "data.root",
}


# what resuming needs beyond the model (checkpoint.MODEL_KEYS)
RESUME_KEYS = (
    "optimizer",
    "epoch",
    "step_in_epoch",
    "global_step",
    "best_val",
    "best_epoch",
    "history",
    "rng",
)


def check_resumable(ckpt: dict[str, Any], cfg: Config) -> None:
    """Raise a ValueError naming the fix unless training under ``cfg`` can resume ``ckpt``."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise ValueError(
            f"checkpoints/last.pt lacks {', '.join(missing)}, so training cannot resume from "
            "it (it can still be tested); start a new run without --resume"
        )
    # Keys added to the config after the checkpoint was written take their defaults, which
    # keep the behaviour of the code that wrote it; so older runs still resume.
    saved = from_dict(ckpt["config"]).to_dict()
    changed = [k for k in _config_diff(saved, cfg.to_dict()) if k not in _RESUMABLE_CHANGES]
    if changed:
        raise ValueError(
            "cannot resume: the config differs from the checkpoint's in "
            f"{', '.join(changed)} (only {', '.join(sorted(_RESUMABLE_CHANGES))} may change)"
        )
