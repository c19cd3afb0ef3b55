"""``metasparse sweep``: the command line of both modes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from metasparse.sweep.backbone import run_sweep
from metasparse.sweep.report import write_all
from metasparse.sweep.runs import run_config_sweep
from metasparse.utils import positive_int

RATIOS = [0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9]


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run the sweep asked for, then write its results, report, plots and hparams."""
    common: dict[str, Any] = {
        "ways": args.way,
        "shots": args.shot,
        "query": args.query,
        "episodes": args.episodes,
        "data_root": args.data_root,
        "split": args.split,
        "device": args.device,
        "progress": not args.no_progress,
        "svm_cs_solver": args.svm_cs_solver,
    }
    if args.checkpoint:
        if args.overrides or args.seeds != 1:
            raise ValueError(
                "KEY=VALUE overrides and --seeds train runs: use them with --config, not "
                "--checkpoint"
            )
        measured, meta = run_sweep(
            args.checkpoint,
            args.ratios,
            seed=args.seed,
            baselines=tuple(args.baselines),
            episodes_per_batch=args.episodes_per_batch,
            **common,
        )
    else:
        measured, meta = run_config_sweep(
            args.config,
            args.overrides,
            args.ratios,
            args.output,
            seeds=args.seeds,
            baselines=tuple(args.baselines),
            episode_seed=args.seed,
            **common,
        )
    written = write_all(Path(args.output), measured, meta)
    print((Path(args.output) / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(p.name for p in written)} and tb/ into {args.output}")
    return 0


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"λ1/λ_max must lie in [0, 1], got {text}")
    return value


def add_parser(sub: Any) -> None:
    """Register ``sweep``."""
    p = sub.add_parser(
        "sweep",
        help="the group-sparse head at several λ1/λ_max: on one trained backbone "
        "(--checkpoint) or one meta-training per setting (--config)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="best.pt or last.pt of a training run")
    source.add_argument(
        "--config", help="base config: one meta-training per ratio (and seed) from it"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="--config mode: base config overrides"
    )
    p.add_argument("--ratios", type=_ratio, nargs="+", default=RATIOS)
    p.add_argument("--seeds", type=positive_int, default=1, help="--config: trainings per setting")
    p.add_argument("--way", type=positive_int, nargs="+", default=[5])
    p.add_argument("--shot", type=positive_int, nargs="+", default=[1, 5])
    p.add_argument("--query", type=positive_int, default=15)
    p.add_argument("--episodes", type=positive_int, default=1000)
    p.add_argument(
        "--episodes-per-batch",
        type=positive_int,
        default=1,
        help="--checkpoint: 1 (default) gives per-episode sparsity statistics",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed test episodes")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["svm_cs", "proto"],
        help="heads measured (or trained, with --config) beside; svm_cs gives the paired "
        "differences",
    )
    p.add_argument(
        "--svm-cs-solver",
        choices=("certified", "qpth"),
        default="certified",
        help="test SVM-CS's problem with the certified solver at λ1 = 0 (default; the same "
        "problem, solved to a 1e-5 gap) or with qpth (slow at 20-way)",
    )
    p.add_argument("--split", default=None, help="test split (default: the config's)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_sweep_cli)
