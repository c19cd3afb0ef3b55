"""The long fuzz run of every head (issue 18): thousands of seeded stress episodes.

Each episode ``i`` is drawn by :func:`metasparse.fuzz.random_spec` from the generator seeded with
``(seed, i)``: ways 2–20, shots 1–20, 1–3 queries per class, p in {1, …, 160}, feature scales
1e-6–1e6, six kinds of support (Gaussian, ReLU, zero, duplicated, rank 1–2, one feature), four
input dtypes, λ1/λ_max in [0, 1]. Every head runs on it and :func:`metasparse.fuzz.check_head`
checks its properties. Records are appended to ``--work``/records.jsonl as they come, so an
interrupted run continues where it stopped (one line per episode); the summary (counts per head
and outcome, by dtype, support kind and scale, every failure with its spec, times) goes to
``--output``. ``--workers N`` runs N single-threaded processes side by side (records then come in
the order episodes finish; what each episode gives does not depend on N)::

    python benchmarks/fuzz_heads.py --episodes 10000 --workers 2 --work /tmp/fuzz \\
        --output benchmarks/results/fuzz_heads.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing
import platform
import sys
import time
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from metasparse.fuzz import HEADS, HeadPropertyError, applicable, check_head, random_spec
from metasparse.utils import atomic_write_json, cpu_name, positive_int


def run_episode(index: int, seed: int, max_support: int, heads: list[str]) -> list[dict[str, Any]]:
    """Every applicable head on episode ``index``; failures recorded, not raised."""
    spec = random_spec(np.random.default_rng([seed, index]), max_support=max_support)
    out = []
    for name in heads:
        if not applicable(name, spec):
            continue
        start = time.perf_counter()
        try:
            record = check_head(name, spec)
        except HeadPropertyError as exc:
            record = {"head": name, "status": "FAIL", "error": str(exc)[:500]}
        except Exception as exc:  # an exception no head should raise is a failure too
            record = {"head": name, "status": "FAIL", "error": f"{type(exc).__name__}: {exc}"[:500]}
        record.setdefault("seconds", time.perf_counter() - start)
        out.append({"episode": index, **spec.__dict__, **record})
    return out


def _worker_init() -> None:
    """Each worker: one thread (qpth's batched LU is unsafe with more), no warnings shown."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def summarize(records: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Counts per head × outcome, and per dtype / kind / scale decade, failures, times."""
    by_head: dict[str, Counter[str]] = defaultdict(Counter)
    by: dict[str, dict[str, Counter[str]]] = {k: defaultdict(Counter) for k in ("dtype", "kind")}
    by["scale_decade"] = defaultdict(Counter)
    seconds: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_head[r["head"]][r["status"]] += 1
        by["dtype"][r["dtype"]][r["status"]] += 1
        by["kind"][r["kind"]][r["status"]] += 1
        by["scale_decade"][f"1e{math.floor(math.log10(r['scale']))}"][r["status"]] += 1
        seconds[r["head"]].append(r["seconds"])
    episodes = len({r["episode"] for r in records})
    return {
        "settings": {
            "episodes": episodes,
            "seed": args.seed,
            "max_support": args.max_support,
            "heads": args.heads,
            "workers": args.workers,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "head_episodes": len(records),
        "by_head": {h: dict(c) for h, c in by_head.items()},
        "by_dtype": {k: dict(c) for k, c in by["dtype"].items()},
        "by_kind": {k: dict(c) for k, c in by["kind"].items()},
        "by_scale_decade": {k: dict(c) for k, c in sorted(by["scale_decade"].items())},
        "seconds_per_episode": {
            h: {"mean": float(np.mean(v)), "p99": float(np.quantile(v, 0.99)), "max": max(v)}
            for h, v in seconds.items()
        },
        "failures": [r for r in records if r["status"] == "FAIL"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=positive_int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-support", type=positive_int, default=400, help="ways × shots cap")
    p.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    p.add_argument("--work", required=True, help="folder of records.jsonl (resumable)")
    p.add_argument("--output", default=None, help="summary JSON (default: --work/summary.json)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes, one thread each")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    _worker_init()  # one thread: qpth's batched LU is unsafe with more (docs/method.md §7)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "records.jsonl"
    records: list[dict[str, Any]] = []
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():  # one line per episode
            try:
                records += json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: that episode runs again
                continue
    done = {r["episode"] for r in records}
    todo = [i for i in range(args.episodes) if i not in done]
    with log.open("a", encoding="utf-8") as fh:
        if log.stat().st_size and not log.read_bytes().endswith(b"\n"):
            fh.write("\n")  # end the line a kill cut short before appending
        one = functools.partial(
            run_episode, seed=args.seed, max_support=args.max_support, heads=args.heads
        )
        bar = tqdm(total=len(todo), disable=args.no_progress, unit="episode", desc="fuzz")
        with contextlib.ExitStack() as stack:
            if args.workers > 1:
                pool = stack.enter_context(
                    multiprocessing.get_context("spawn").Pool(args.workers, _worker_init)
                )
                results = pool.imap_unordered(one, todo)
            else:
                results = map(one, todo)
            for new in results:
                fh.write(json.dumps(new) + "\n")
                fh.flush()
                records += new
                bar.update()
        bar.close()
    summary = summarize([r for r in records if r["episode"] < args.episodes], args)
    atomic_write_json(args.output or work / "summary.json", summary)
    print(json.dumps({k: summary[k] for k in ("head_episodes", "by_head")}, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
