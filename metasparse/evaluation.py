"""Meta-testing: accuracy ± 95% CI on fixed, seeded episodes; the Omniglot 20-run challenge."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.data import FewShotDataset, build_dataset
from metasparse.model import FewShotModel, build_component, resolve_device
from metasparse.utils import atomic_write_json, mean_ci95


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class _FeatureDataset(FewShotDataset):
    """The items of a dataset replaced by their (precomputed) backbone features."""

    def __init__(self, features: torch.Tensor, base: FewShotDataset) -> None:
        super().__init__(base.labels, base.class_names)
        self.features = features
        self.name = getattr(base, "name", None)
        self.split = getattr(base, "split", None)

    def load_image(self, index: int) -> torch.Tensor:
        return self.features[index]


@torch.no_grad()
def embed_dataset(
    model: FewShotModel, dataset: FewShotDataset, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Backbone features (N, d) of every item, in eval mode (so independent of batching), under
    the model's ``backbone_precision`` autocast (float32 features whatever it is)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks = [model.features(images.to(device)) for images, _ in loader]
    return torch.cat(chunks)


@torch.no_grad()
def evaluate(
    model: FewShotModel,
    dataset: FewShotDataset,
    way: int,
    shot: int,
    query: int,
    episodes: int,
    seed: int,
    episodes_per_batch: int = 8,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "eval",
    precompute: bool = True,
    distributed: bool = False,
) -> dict[str, Any]:
    """Mean query accuracy (percent) ± 95% CI over ``episodes`` fixed episodes, plus head stats.

    The episodes are a pure function of ``seed``: two models evaluated with the same arguments see
    identical tasks. With ``precompute`` (for deterministic test transforms) every image is
    embedded once and the episodes are drawn from the features — the same tasks and logits as
    embedding each episode, at a fraction of the cost. ``distributed``: see :func:`run_episodes`
    (every process embeds the whole dataset; the episodes are split).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        if precompute:
            dataset, num_workers = feature_dataset(model, dataset, device), 0
            classify = head_classifier(model.head, way)
        else:

            def classify(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
                return model(batch["support"], batch["support_labels"], batch["query"], way)

        return run_episodes(
            classify,
            dataset,
            way,
            shot,
            query,
            episodes,
            seed,
            episodes_per_batch,
            device,
            progress,
            desc,
            num_workers,
            distributed,
        )
    finally:
        model.train(was_training)


def head_classifier(head: torch.nn.Module, way: int) -> Any:
    """Logits and statistics of ``head`` on a batch of feature episodes (a ``classify`` for
    :func:`run_episodes`)."""

    def classify(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        return head(batch["query"], batch["support"], batch["support_labels"], way)

    return classify


def feature_dataset(
    model: FewShotModel, dataset: FewShotDataset, device: torch.device | str = "cpu"
) -> FewShotDataset:
    """``dataset`` with every image replaced by its backbone features (eval mode), so that many
    heads can be evaluated on the same episodes without embedding them again."""
    return _FeatureDataset(embed_dataset(model, dataset, torch.device(device)), dataset)


def run_episodes(
    classify: Any,
    dataset: FewShotDataset,
    way: int,
    shot: int,
    query: int,
    episodes: int,
    seed: int,
    episodes_per_batch: int,
    device: torch.device,
    progress: bool,
    desc: str,
    num_workers: int,
    distributed: bool = False,
) -> dict[str, Any]:
    """Accuracy ± CI, the mean head statistics, and per episode / per batch records.

    ``distributed``: the processes of the ``torch.distributed`` group each classify a contiguous
    block of the batches and every process gets all the results, in batch order: the same
    batches, so the same numbers, as one process classifying them all.
    """
    from metasparse import distributed as dist
    from metasparse.data.episodes import episode_loader

    num_batches = -(-episodes // episodes_per_batch)
    ctx = dist.current() if distributed else dist.SINGLE
    first = ctx.rank * num_batches // ctx.world_size
    end = (ctx.rank + 1) * num_batches // ctx.world_size
    accs: list[np.ndarray] = []
    batch_stats: list[dict[str, float]] = []
    if end > first:  # with fewer batches than processes, some have none
        loader = episode_loader(
            dataset,
            way,
            shot,
            query,
            episodes_per_batch,
            end,
            seed=seed,
            epoch=0,
            num_workers=num_workers,
            start_batch=first,
        )
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
            batch = _to_device(batch, device)
            logits, stats = classify(batch)
            correct = (logits.argmax(-1) == batch["query_labels"]).float().mean(-1)
            accs.append(correct.cpu().numpy())
            batch_stats.append({k: float(v) for k, v in stats.items()})
    if ctx.enabled:
        parts = dist.gather((accs, batch_stats))
        accs = [a for part_accs, _ in parts for a in part_accs]
        batch_stats = [s for _, part_stats in parts for s in part_stats]
    per_episode = np.concatenate(accs)[:episodes] * 100.0
    mean, ci = mean_ci95(per_episode)
    stats_sum: dict[str, float] = defaultdict(float)
    for record in batch_stats:
        for key, value in record.items():
            stats_sum[key] += value
    return {
        "accuracy": mean,
        "ci95": ci,
        "episodes": int(per_episode.size),
        "head_stats": {k: v / max(len(batch_stats), 1) for k, v in stats_sum.items()},
        "per_episode_accuracy": per_episode.tolist(),
        "batch_stats": batch_stats,
    }


def _parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"head option {item!r} must look like key=value (e.g. lam_ratio=0.1)")
        key, raw = item.split("=", 1)
        out[key] = yaml.safe_load(raw)
    return out


def run_test(args: argparse.Namespace) -> int:
    """``metasparse test``: evaluate one checkpoint over several (way, shot) settings."""
    from metasparse.heads import build_head

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    model, cfg = model_from_checkpoint(ckpt, device)
    head_name = cfg.model.head
    if args.head:
        head_name = args.head
        options = _parse_options(args.head_option)
        model.head = build_component("head", build_head, args.head, options).to(device)
    root = args.data_root if args.data_root is not None else cfg.data.root
    split = args.split or cfg.data.test_split
    dataset = build_dataset(cfg.data.name, split, root=root, augment=False, **cfg.data.options)
    results = []
    for way in args.way:
        for shot in args.shot:
            r = evaluate(
                model,
                dataset,
                way,
                shot,
                args.query,
                args.episodes,
                seed=args.seed,
                episodes_per_batch=args.episodes_per_batch,
                device=device,
                num_workers=args.num_workers,
                progress=not args.no_progress,
                desc=f"{way}-way {shot}-shot",
            )
            results.append(
                {
                    "way": way,
                    "shot": shot,
                    "query": args.query,
                    "episodes": r["episodes"],
                    "accuracy": r["accuracy"],
                    "ci95": r["ci95"],
                    "head": head_name,
                    "dataset": cfg.data.name,
                    "split": split,
                    "seed": args.seed,
                    "checkpoint": str(args.checkpoint),
                    "head_stats": r["head_stats"],
                }
            )
    print(f"{'way':>4} {'shot':>4} {'episodes':>8}  {'accuracy (%)':>16}  head")
    for r in results:
        print(
            f"{r['way']:>4} {r['shot']:>4} {r['episodes']:>8}  "
            f"{r['accuracy']:>7.2f} ± {r['ci95']:<6.2f}  {r['head']}"
        )
    if args.output:
        atomic_write_json(args.output, results)
        print(f"wrote {args.output}")
    return 0


@torch.no_grad()
def omniglot_runs_error(model: FewShotModel, runs: list[Any], device: torch.device) -> list[float]:
    """Error rate (percent) of each 20-way one-shot run: each training image is its own class."""
    model.eval()
    errors = []
    for run in runs:
        support = run.support.unsqueeze(0).to(device)
        query = run.query.unsqueeze(0).to(device)
        n_way = support.shape[1]
        labels = torch.arange(n_way, device=device).unsqueeze(0)
        logits, _ = model(support, labels, query, n_way)
        pred = logits.argmax(-1).squeeze(0).cpu()
        errors.append(float((pred != run.query_labels).float().mean()) * 100.0)
    return errors


def run_omniglot_runs(args: argparse.Namespace) -> int:
    """``metasparse omniglot-runs``: error rate on one-shot runs in the layout of Lake et al.'s
    20-run challenge (their own runs, or runs that ``write_runs`` generates, which are not)."""
    from metasparse.data.omniglot_runs import read_runs

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, map_location=device)
    model, cfg = model_from_checkpoint(ckpt, device)
    image_size = int(cfg.data.options.get("image_size", 28))
    runs = read_runs(args.runs_dir, image_size=image_size)
    errors = omniglot_runs_error(model, runs, device)
    out = {
        "error_rate": float(np.mean(errors)),
        "per_run": [{"run": r.name, "error_rate": e} for r, e in zip(runs, errors, strict=True)],
        "runs": len(runs),
        "head": cfg.model.head,
        "checkpoint": str(args.checkpoint),
    }
    print(f"Omniglot one-shot runs: error rate {out['error_rate']:.2f}% over {len(runs)} runs")
    if args.output:
        atomic_write_json(args.output, out)
        print(f"wrote {args.output}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``test`` and ``omniglot-runs``."""
    p = sub.add_parser("test", help="meta-test a checkpoint: accuracy ± 95%% CI per (way, shot)")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    p.add_argument("--way", type=int, nargs="+", default=[5])
    p.add_argument("--shot", type=int, nargs="+", default=[1, 5])
    p.add_argument("--query", type=int, default=15)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--episodes-per-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed test episodes")
    p.add_argument("--split", default=None, help="dataset split (default: the config's test split)")
    p.add_argument("--data-root", default=None, help="override the dataset root of the config")
    p.add_argument("--head", default=None, help="evaluate with another head than the trained one")
    p.add_argument("--head-option", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_test)

    q = sub.add_parser("omniglot-runs", help="error rate on the Omniglot 20-run one-shot challenge")
    q.add_argument("--checkpoint", required=True)
    q.add_argument("--runs-dir", required=True, help="folder holding run01 … run20")
    q.add_argument("--output", default=None)
    q.add_argument("--device", default="auto")
    q.set_defaults(func=run_omniglot_runs)
