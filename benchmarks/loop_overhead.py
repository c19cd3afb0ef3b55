"""What the training loop adds to a bare forward + backward of the same network on the same batch.

Usage (from the repo root):

    python benchmarks/loop_overhead.py --config configs/omniglot/conv4_proto_published.yaml \\
        --root ../shared/data/omniglot --threads 1 2 --channels-last --compile \\
        --precision bfloat16 --json benchmarks/results/loop_overhead.json

On one batch of the config's training episodes, in interleaved rounds (so a busy machine slows
every variant alike), it times:

- ``loop``: ``Trainer.step``, what training runs (features cut from the graph so head and backbone
  are timed apart, two backward calls, metrics read back);
- ``bare``: embed, head, cross-entropy, one ``backward()`` and the optimizer step;
- ``backbone``: the backbone's forward and backward alone (a sum of its features as the loss);
- ``data``: drawing one batch from the episode loader, as the loop does between steps;

and, with ``--channels-last`` / ``--compile``, ``bare`` again with ``model.channels_last`` on
or the backbone compiled by ``torch.compile`` (``model.compile``). ``--precision P`` adds
``bare_P`` and ``loop_P``, the backbone under autocast to P (``model.backbone_precision``;
float16 with its loss scaler), and with the other flags ``bare_channels_last_P`` and
``bare_channels_last_compiled_P``. Each variant is relative to the config, so give
``--set model.channels_last=false`` to time channels-last against a config that turns it on.
Medians over rounds, and ratios to ``bare``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from metasparse.config import Config, load_config
from metasparse.data.episodes import episode_loader
from metasparse.model import FewShotModel
from metasparse.optim import make_optimizer
from metasparse.precision import PRECISIONS, make_scaler
from metasparse.training import Trainer
from metasparse.utils import atomic_write_json, cpu_name, positive_int

REPO = Path(__file__).resolve().parents[1]


def bare_step(
    model: FewShotModel, cfg: Config, batch: dict[str, torch.Tensor]
) -> Callable[[], None]:
    """One plain meta-gradient step: forward, loss, one backward, optimizer step (float16:
    through a loss scaler, as training does)."""
    opt, way = make_optimizer(model, cfg.train), cfg.train.way
    scaler = make_scaler(model.precision, batch["support"].device)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        logits, _ = model(batch["support"], batch["support_labels"], batch["query"], way)
        loss = F.cross_entropy(logits.reshape(-1, way), batch["query_labels"].reshape(-1))
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return run


def backbone_step(trainer: Trainer, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """The backbone's forward and backward alone on the batch's images."""
    model = trainer.model
    images = torch.cat([batch["support"].flatten(0, 1), batch["query"].flatten(0, 1)])

    def run() -> None:
        model.zero_grad(set_to_none=True)
        model.backbone(images).sum().backward()

    return run


def measure(
    variants: dict[str, Callable[[], None]],
    rounds: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Median and quartiles (ms) of each variant, timed in interleaved rounds (``sync``: wait
    for the device, e.g. ``torch.cuda.synchronize``)."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(1e3 * (time.perf_counter() - start))
    out = {}
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4) if len(ts) > 1 else (ts[0],) * 3
        out[name] = {"median_ms": statistics.median(ts), "q1_ms": q1, "q3_ms": q3}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", required=True, help="training config (its train.* episode shape)")
    p.add_argument("--root", default=None, help="dataset folder (overrides data.root)")
    p.add_argument("--set", nargs="*", default=[], help="config overrides")
    p.add_argument("--threads", type=positive_int, nargs="+", default=[1])
    p.add_argument("--rounds", type=positive_int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels-last", action="store_true", help="also time a channels-last bare")
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd bare")
    p.add_argument(
        "--precision",
        nargs="+",
        default=[],
        choices=[name for name in PRECISIONS if name != "float32"],
        help="also time bare and loop with the backbone under autocast to these dtypes",
    )
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()

    overrides = [f"data.root={args.root}"] if args.root else []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [*overrides, *args.set, f"output_dir={tmp}/run"])
        if cfg.model.head == "svm_cs" and max(args.threads) > 1:
            p.error("svm_cs uses batched LU, unsafe after set_num_threads(n > 1): use --threads 1")
        trainer = Trainer(cfg, progress=False)
        device, t = trainer.device, cfg.train
        loader = episode_loader(
            trainer.train_set, t.way, t.shot, t.query, t.episodes_per_batch, 10**6, seed=t.seed
        )
        batches = iter(loader)
        batch = {k: v.to(device) for k, v in next(batches).items()}

        def draw() -> None:
            next(batches)

        variants: dict[str, Callable[[], None]] = {
            "loop": lambda: trainer.step(batch),
            "bare": bare_step(trainer.model, cfg, batch),
            "backbone": backbone_step(trainer, batch),
            "data": draw,
        }

        def variant(**changes: Any) -> FewShotModel:
            """A model like the trainer's (same weights), with other model options."""
            model_cfg = dataclasses.replace(cfg.model, **changes)
            model = FewShotModel.from_config(model_cfg, trainer.in_channels)
            model.load_state_dict(trainer.model.state_dict())
            return model.to(device)

        changes: dict[str, dict[str, Any]] = {}
        if args.channels_last:
            changes["bare_channels_last"] = {"channels_last": True}
        if args.compile:
            changes["bare_compiled"] = {"compile": True}
        for prec in args.precision:
            changes[f"bare_{prec}"] = {"backbone_precision": prec}
            if args.channels_last:
                changes[f"bare_channels_last_{prec}"] = {
                    "channels_last": True,
                    "backbone_precision": prec,
                }
            if args.channels_last and args.compile:
                changes[f"bare_channels_last_compiled_{prec}"] = {
                    "channels_last": True,
                    "compile": True,
                    "backbone_precision": prec,
                }
        for name, change in changes.items():
            variants[name] = bare_step(variant(**change), cfg, batch)
        for prec in args.precision:  # what training runs, under autocast
            sets = [f"model.backbone_precision={prec}", f"output_dir={tmp}/run_{prec}"]
            other = Trainer(
                load_config(args.config, [*overrides, *args.set, *sets]), progress=False
            )
            other.model.load_state_dict(trainer.model.state_dict())
            variants[f"loop_{prec}"] = lambda other=other: other.step(batch)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        rows = []
        for threads in args.threads:
            torch.set_num_threads(threads)
            figures = measure(variants, args.rounds, args.warmup, sync)
            bare = figures["bare"]["median_ms"]
            for name, fig in figures.items():
                rows.append(
                    {
                        "threads": threads,
                        "variant": name,
                        **fig,
                        "ratio_to_bare": fig["median_ms"] / bare,
                    }
                )

    images = t.episodes_per_batch * t.way * (t.shot + t.query)
    print(
        f"{cfg.name}: {t.episodes_per_batch} × {t.way}-way {t.shot}-shot {t.query}-query "
        f"({images} images), head {cfg.model.head}, {args.rounds} rounds"
    )
    print("| threads | variant | median ms | q1-q3 ms | × bare |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['threads']} | {r['variant']} | {r['median_ms']:.1f} | "
            f"{r['q1_ms']:.1f}-{r['q3_ms']:.1f} | {r['ratio_to_bare']:.2f} |"
        )
    if args.json:
        atomic_write_json(
            args.json,
            {
                "config": cfg.to_dict(),
                "images_per_step": images,
                "rounds": args.rounds,
                "machine": {
                    "torch": torch.__version__,
                    "platform": platform.platform(),
                    "processor": cpu_name(),
                },
                "options": {
                    "channels_last": args.channels_last,
                    "compile": args.compile,
                    "precision": args.precision,
                    "set": args.set,
                    "warmup": args.warmup,
                },
                "rows": rows,
            },
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
