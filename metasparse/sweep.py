"""``metasparse sweep``: the group-sparse head at several λ1/λ_max on one trained backbone.

Every setting is evaluated on the same fixed, seeded test episodes, embedded once, beside the
SVM-CS and ProtoNet heads on the same features; differences between settings are paired (per
episode), each with its own 95 % CI. Episodes are solved one per batch by default, so the
sparsity statistics (fraction of the features a task uses) are per episode.

Writes ``results.json``, ``results.csv``, ``report.md`` and ``accuracy_vs_ratio.png`` /
``accuracy_vs_features.png`` into ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metasparse.checkpoint import load_checkpoint, model_from_checkpoint
from metasparse.data import build_dataset
from metasparse.evaluation import evaluate_head, feature_dataset
from metasparse.model import build_component, resolve_device
from metasparse.utils import atomic_write_bytes, atomic_write_json, mean_ci95, positive_int

SPARSE = "group_sparse_svm"
CSV_FIELDS = (
    "setting",
    "head",
    "lam_ratio",
    "way",
    "shot",
    "episodes",
    "accuracy",
    "ci95",
    "features_used_mean",
    "features_used_std",
    "lam1_mean",
    "gap_mean",
    "iterations_mean",
    "converged",
    "head_ms_per_episode",
    "diff_vs_svm_cs",
    "diff_vs_svm_cs_ci95",
)


def settings(ratios: list[float], baselines: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, head name, head options) for each ratio, then each baseline head."""
    for r in ratios:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"--ratios must lie in [0, 1] (λ1/λ_max), got {r}")
    out = [(f"{SPARSE}@{r:g}", SPARSE, {"lam_ratio": float(r)}) for r in ratios]
    return out + [(name, name, {}) for name in baselines]


def _stat(batch_stats: list[dict[str, float]], key: str) -> tuple[float | None, float | None]:
    values = [b[key] for b in batch_stats if key in b]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def run_sweep(
    checkpoint: str | Path,
    ratios: list[float],
    way: int,
    shots: list[int],
    query: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    baselines: tuple[str, ...] = ("svm_cs", "proto"),
    episodes_per_batch: int = 1,
    data_root: str | None = None,
    split: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per setting × shot (see ``CSV_FIELDS``, plus its per-episode accuracies), and
    what the rows were measured on (checkpoint, dataset, split, episodes)."""
    from metasparse.heads import build_head

    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint, map_location=dev)
    model, cfg = model_from_checkpoint(ckpt, dev)
    root = data_root if data_root is not None else cfg.data.root
    split = split or cfg.data.test_split
    dataset = build_dataset(cfg.data.name, split, root=root, augment=False, **cfg.data.options)
    if way > dataset.num_classes:
        raise ValueError(
            f"--way {way} exceeds the {dataset.num_classes} classes of split {split!r}; lower --way"
        )
    features = feature_dataset(model, dataset, dev)
    rows: list[dict[str, Any]] = []
    for shot in shots:
        per_episode: dict[str, np.ndarray] = {}
        for label, name, options in settings(ratios, list(baselines)):
            head = build_component("head", build_head, name, options).to(dev)
            start = time.perf_counter()
            r = evaluate_head(
                head,
                features,
                way,
                shot,
                query,
                episodes,
                seed,
                episodes_per_batch,
                dev,
                progress,
                f"{label} {shot}-shot",
            )
            seconds = time.perf_counter() - start
            per_episode[label] = np.asarray(r["per_episode_accuracy"])
            used = _stat(r["batch_stats"], "features_used")
            rows.append(
                {
                    "setting": label,
                    "head": name,
                    "lam_ratio": options.get("lam_ratio"),
                    "way": way,
                    "shot": shot,
                    "episodes": r["episodes"],
                    "accuracy": r["accuracy"],
                    "ci95": r["ci95"],
                    "features_used_mean": used[0],
                    "features_used_std": used[1],
                    "lam1_mean": _stat(r["batch_stats"], "lam1")[0],
                    "gap_mean": _stat(r["batch_stats"], "gap")[0],
                    "iterations_mean": _stat(r["batch_stats"], "iterations")[0],
                    "converged": _stat(r["batch_stats"], "converged")[0],
                    "head_ms_per_episode": 1e3 * seconds / r["episodes"],
                    "per_episode_accuracy": r["per_episode_accuracy"],
                }
            )
        if "svm_cs" in per_episode:  # paired differences on the same episodes
            for row in rows:
                if row["shot"] == shot:
                    diff, ci = mean_ci95(per_episode[row["setting"]] - per_episode["svm_cs"])
                    row["diff_vs_svm_cs"], row["diff_vs_svm_cs_ci95"] = diff, ci
    meta = {
        "checkpoint": str(checkpoint),
        "dataset": cfg.data.name,
        "split": split,
        "way": way,
        "query": query,
        "episodes": episodes,
        "seed": seed,
        "episodes_per_batch": episodes_per_batch,
        "torch": torch.__version__,
    }
    return rows, meta


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown report: one table per shot, the best setting marked."""
    lines = [
        "# λ1/λ_max sweep",
        "",
        f"Checkpoint `{meta['checkpoint']}`, {meta['dataset']} split `{meta['split']}`, "
        f"{meta['episodes']} fixed episodes (seed {meta['seed']}) of {meta['way']}-way with "
        f"{meta['query']} queries per class, the same episodes for every setting. Accuracy ± 95 % "
        "CI; the difference to SVM-CS is paired per episode, ± its own 95 % CI. Features used: "
        "mean ± standard deviation over "
        + ("episodes." if meta["episodes_per_batch"] == 1 else "batches of episodes."),
        "",
    ]
    for shot in sorted({r["shot"] for r in rows}):
        these = [r for r in rows if r["shot"] == shot]
        best = max(these, key=lambda r: r["accuracy"])
        lines += [
            f"## {meta['way']}-way {shot}-shot",
            "",
            "| setting | accuracy | vs SVM-CS (paired) | features used | iterations | gap | "
            "ms / episode |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in these:
            mark = " **(best)**" if r is best else ""
            diff = (
                f"{r['diff_vs_svm_cs']:+.2f} ± {r['diff_vs_svm_cs_ci95']:.2f}"
                if r.get("diff_vs_svm_cs") is not None and r["setting"] != "svm_cs"
                else "-"
            )
            used = (
                f"{100 * r['features_used_mean']:.1f} ± {100 * r['features_used_std']:.1f} %"
                if r["features_used_mean"] is not None
                else "-"
            )
            its = "-" if r["iterations_mean"] is None else f"{r['iterations_mean']:.1f}"
            gap = "-" if r["gap_mean"] is None else f"{r['gap_mean']:.1e}"
            lines.append(
                f"| {r['setting']}{mark} | {r['accuracy']:.2f} ± {r['ci95']:.2f} | {diff} | "
                f"{used} | {its} | {gap} | {r['head_ms_per_episode']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Accuracy ± CI against λ1/λ_max (baselines as bands) and against the features used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig1, ax1 = plt.subplots(figsize=(6, 4))
    fig2, ax2 = plt.subplots(figsize=(6, 4))
    for shot in sorted({r["shot"] for r in rows}):
        sparse = [r for r in rows if r["shot"] == shot and r["head"] == SPARSE]
        x = [r["lam_ratio"] for r in sparse]
        y = [r["accuracy"] for r in sparse]
        e = [r["ci95"] for r in sparse]
        line = ax1.errorbar(x, y, yerr=e, marker="o", capsize=3, label=f"{shot}-shot")
        color = line[0].get_color()
        for r in rows:
            if r["shot"] == shot and r["head"] != SPARSE:
                style = "--" if r["head"] == "svm_cs" else ":"
                ax1.axhline(r["accuracy"], color=color, ls=style, lw=1)
                ax1.axhspan(
                    r["accuracy"] - r["ci95"], r["accuracy"] + r["ci95"], color=color, alpha=0.08
                )
        used = [100 * r["features_used_mean"] for r in sparse]
        ax2.errorbar(used, y, yerr=e, marker="o", capsize=3, label=f"{shot}-shot")
    ax1.set(
        xlabel="λ1 / λ_max",
        ylabel="accuracy (%)",
        title="group-sparse head (dashed: SVM-CS, dotted: ProtoNet)",
    )
    ax2.set(
        xlabel="features used per task (%)",
        ylabel="accuracy (%)",
        title="accuracy against sparsity",
    )
    for fig, ax, name in (
        (fig1, ax1, "accuracy_vs_ratio.png"),
        (fig2, ax2, "accuracy_vs_features.png"),
    ):
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(out / name, buf.getvalue())
        written.append(out / name)
    return written


def run_sweep_cli(args: argparse.Namespace) -> int:
    """``metasparse sweep --checkpoint …``: run, then write results, report and plots."""
    out = Path(args.output)
    rows, meta = run_sweep(
        args.checkpoint,
        args.ratios,
        args.way,
        args.shot,
        args.query,
        args.episodes,
        args.seed,
        tuple(args.baselines),
        args.episodes_per_batch,
        args.data_root,
        args.split,
        args.device,
        not args.no_progress,
    )
    atomic_write_json(out / "results.json", {"meta": meta, "rows": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode("utf-8"))
    text = report(rows, meta)
    atomic_write_bytes(out / "report.md", text.encode("utf-8"))
    plots(rows, out)
    print(text)
    print(f"wrote {out}/results.json, results.csv, report.md and two plots")
    return 0


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"λ1/λ_max must lie in [0, 1], got {text}")
    return value


def add_parser(sub: Any) -> None:
    """Register ``sweep``."""
    p = sub.add_parser(
        "sweep", help="the group-sparse head at several λ1/λ_max on one trained backbone"
    )
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a training run")
    p.add_argument("--ratios", type=_ratio, nargs="+", default=[0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9])
    p.add_argument("--way", type=positive_int, default=5)
    p.add_argument("--shot", type=positive_int, nargs="+", default=[1, 5])
    p.add_argument("--query", type=positive_int, default=15)
    p.add_argument("--episodes", type=positive_int, default=1000)
    p.add_argument(
        "--episodes-per-batch",
        type=positive_int,
        default=1,
        help="1 (default) gives per-episode sparsity statistics",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed test episodes")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=["svm_cs", "proto"],
        help="heads evaluated beside (svm_cs gives the paired differences)",
    )
    p.add_argument("--split", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_sweep_cli)
