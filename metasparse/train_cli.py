"""``metasparse train``: meta-train from a config, in one process or as one of torchrun's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from metasparse import distributed as dist
from metasparse.config import load_config
from metasparse.training import train


def run_train(args: argparse.Namespace) -> int:
    """``metasparse train`` (under torchrun: one process of a distributed run)."""
    cfg = load_config(args.config, args.overrides)
    with dist.process_group(cfg.train.device) as ctx:
        summary = train(
            cfg, resume=args.resume, progress=not args.no_progress, max_steps=args.max_steps
        )
    if not ctx.is_main:
        return 0
    best = summary["best_val_accuracy"]
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    if best >= 0:
        print(
            f"best validation accuracy {best:.2f}% at epoch {summary['best_epoch'] + 1}; "
            f"checkpoints in {Path(summary['run_dir']) / 'checkpoints'}"
        )
    return 0


RESUME_POINTS = ("last", "previous")


def is_override(token: str) -> bool:
    """A ``KEY=VALUE`` config override, as opposed to an option or its value."""
    return "=" in token and not token.startswith("-")


def bare_resume_before_override(argv: list[str]) -> list[str]:
    """``--resume KEY=VALUE`` means ``--resume last KEY=VALUE``: argparse would otherwise take
    the override as the optional value of ``--resume`` and reject it as a resume point."""
    out: list[str] = []
    for i, token in enumerate(argv):
        out.append(token)
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if token == "--resume" and nxt is not None and is_override(nxt):
            out.append("last")
    return out


def add_parser(sub: Any) -> None:
    """Register ``train``."""
    p = sub.add_parser("train", help="meta-train a backbone and head on few-shot episodes")
    p.add_argument("--config", default=None, help="YAML file (see configs/); defaults otherwise")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. train.epochs=5 model.head=svm_cs",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=False,
        choices=RESUME_POINTS,
        help="continue the run in output_dir from checkpoints/last.pt (or, with 'previous', "
        "from previous.pt: the checkpoint before it, kept in case last.pt is damaged)",
    )
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop (with a checkpoint) after this many steps of this invocation",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
