"""The ``metasparse`` command line: each subcommand lives with the code it drives."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand group -> module exposing ``add_parser(subparsers)``; the parser it adds sets
# ``func`` (called with the parsed namespace, returning an exit code).
_COMMAND_MODULES = (
    "metasparse.train_cli",
    "metasparse.evaluation",
    "metasparse.sweep",
    "metasparse.demo",
    "metasparse.data.cli",
    "metasparse.synthetic.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands registered by their own modules)."""
    parser = argparse.ArgumentParser(
        prog="metasparse",
        description="Few-shot meta-learning with certified group-sparse SVM heads.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet must not break the rest
            if exc.name != name:
                raise
            continue
        module.add_parser(sub)
    return parser


def _only_train_is_distributed(command: str) -> None:
    """Refuse other commands under torchrun: each of its N processes would do (and write) all
    of the work."""
    from metasparse.distributed import from_environment

    ctx = from_environment()
    if command != "train" and ctx.enabled:
        raise ValueError(
            f"metasparse {command} does not run distributed (WORLD_SIZE={ctx.world_size}): only "
            f"metasparse train does; run metasparse {command} without torchrun"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metasparse`` console script."""
    from metasparse.train_cli import bare_resume_before_override, is_override

    parser = build_parser()
    tokens = bare_resume_before_override(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(tokens)
    # argparse takes one run of positionals only: KEY=VALUE overrides placed after an option
    # (`train a=1 --no-progress b=2`) come back as extras, in order, and join the others.
    if extra and hasattr(args, "overrides") and all(is_override(t) for t in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        _only_train_is_distributed(args.command)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as exc:
        print(f"metasparse: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
