"""A sweep's files: ``results.json``/``.csv``, ``arrays.npz``, ``report.md``, plots, hparams."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from metasparse.sweep.measure import SPARSE, Measured, paired_differences, save_arrays
from metasparse.utils import atomic_write_bytes, atomic_write_json, mean_ci95

CSV_FIELDS = (
    "setting",
    "head",
    "lam_ratio",
    "seed",
    "way",
    "shot",
    "episodes",
    "accuracy",
    "ci95",
    "diff_vs_svm_cs",
    "diff_vs_svm_cs_ci95",
    "features_used_mean",
    "features_used_std",
    "features_proven_used_mean",
    "features_proven_unused_mean",
    "features_undetermined_mean",
    "features_undetermined_at_tol_mean",
    "episodes_tightened",
    "lam1_mean",
    "gap_mean",
    "iterations_mean",
    "converged",
    "head_ms_per_episode",
    "train_seconds",
    "best_val",
)
PLOTS = ("accuracy_vs_ratio.png", "accuracy_vs_features.png", "feature_usage.png")


def write_all(out: Path, measured: list[Measured], meta: dict[str, Any]) -> list[Path]:
    """Every file of a sweep, each written atomically; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [m.row for m in measured]
    paired_differences(rows)
    atomic_write_json(out / "results.json", {"meta": meta, "rows": rows})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_FIELDS})
    atomic_write_bytes(out / "results.csv", buf.getvalue().encode("utf-8"))
    save_arrays(out / "arrays.npz", measured, usage_dtype=np.float32)
    atomic_write_bytes(out / "report.md", report(rows, meta).encode("utf-8"))
    written = [out / n for n in ("results.json", "results.csv", "arrays.npz", "report.md")]
    written += plots(measured, out)
    hparams(rows, out / "tb")
    return written


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The markdown report: one table per way × shot, the best setting marked."""
    seeds = sorted({r.get("seed") for r in rows}, key=lambda s: -1 if s is None else s)
    source = (
        f"checkpoint `{meta['checkpoint']}`"
        if meta.get("checkpoint")
        else f"one meta-training per setting from `{meta['config']}`"
        + (f", seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "")
    )
    lines = [
        "# λ1/λ_max sweep",
        "",
        f"{source}; tested on {meta['dataset']} split `{meta['split']}`, {meta['episodes']} fixed "
        f"episodes (seed {meta['episode_seed']}) per way × shot with {meta['query']} queries per "
        "class, the same episodes for every setting.",
        "",
        "How to read it: accuracy ± 95 % CI over episodes; *vs SVM-CS* is the mean of the "
        "per-episode differences to the SVM-CS row on the same episodes, ± its own 95 % CI (a "
        "CI that excludes 0 is a real difference). *Used* is the fraction of features with a "
        "nonzero weight in the head's solution (mean ± sd over episodes); *unused (proven)* are "
        "features a gap-safe test proves unused at the optimum; *open* are those it could not "
        "decide, after a float64 re-solve to a 1e-10 gap of the episodes it could not decide at "
        "the head's tolerance (*open at tol*).",
        "",
    ]
    for way, shot in sorted({(r["way"], r["shot"]) for r in rows}):
        these = [r for r in rows if (r["way"], r["shot"]) == (way, shot)]
        best = max(these, key=lambda r: r["accuracy"])
        lines += [
            f"## {way}-way {shot}-shot",
            "",
            "| setting | seed | accuracy | vs SVM-CS | used | unused (proven) | open | open at tol "
            "| iterations | ms / episode |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
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
                if r.get("features_used_mean") is not None
                else "-"
            )
            its = "-" if r.get("iterations_mean") is None else f"{r['iterations_mean']:.1f}"
            seed = "-" if r.get("seed") is None else str(r["seed"])
            lines.append(
                f"| {r['setting']}{mark} | {seed} | {r['accuracy']:.2f} ± {r['ci95']:.2f} | "
                f"{diff} | {used} | {_pct(r.get('features_proven_unused_mean'))} | "
                f"{_pct(r.get('features_undetermined_mean'))} | "
                f"{_pct(r.get('features_undetermined_at_tol_mean'))} | {its} | "
                f"{r['head_ms_per_episode']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def _pooled(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean ± CI of the per-episode accuracies of ``rows`` (one setting, pooled over seeds)."""
    return mean_ci95(np.concatenate([np.asarray(r["per_episode_accuracy"]) for r in rows]))


def plots(measured: list[Measured], out: Path) -> list[Path]:
    """Accuracy against λ1/λ_max and against the features used, the sorted per-feature usage
    curves (one panel per way × shot), and one support picture per way × shot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m.row for m in measured]
    ways = sorted({r["way"] for r in rows})
    combos = sorted({(r["way"], r["shot"]) for r in rows})
    figs = {
        name: plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
        for name, n in zip(PLOTS, (len(ways), len(ways), len(combos)), strict=True)
    }
    for wi, way in enumerate(ways):
        ax1, ax2 = figs[PLOTS[0]][1][0, wi], figs[PLOTS[1]][1][0, wi]
        for shot in sorted({r["shot"] for r in rows if r["way"] == way}):
            here = [r for r in rows if (r["way"], r["shot"]) == (way, shot)]
            ratios = sorted({r["lam_ratio"] for r in here if r["head"] == SPARSE})
            pooled = [_pooled([r for r in here if r["lam_ratio"] == x]) for x in ratios]
            ys, es = [p[0] for p in pooled], [p[1] for p in pooled]
            line = ax1.errorbar(ratios, ys, yerr=es, marker="o", capsize=3, label=f"{shot}-shot")
            color = line[0].get_color()
            for base in sorted({r["setting"] for r in here if r["head"] != SPARSE}):
                acc, ci = _pooled([r for r in here if r["setting"] == base])
                ax1.axhline(acc, color=color, ls="--" if base == "svm_cs" else ":", lw=1)
                ax1.axhspan(acc - ci, acc + ci, color=color, alpha=0.08)
            used = [
                100
                * (
                    1
                    - np.mean(
                        [r["features_proven_unused_mean"] for r in here if r["lam_ratio"] == x]
                    )
                )
                for x in ratios
            ]
            ax2.errorbar(used, ys, yerr=es, marker="o", capsize=3, label=f"{shot}-shot")
        ax1.set(xlabel="λ1 / λ_max", ylabel="accuracy (%)", title=f"{way}-way")
        ax2.set(
            xlabel="features used per task (%, not provably unused)",
            ylabel="accuracy (%)",
            title=f"{way}-way",
        )
    figs[PLOTS[0]][0].suptitle("group-sparse head (dashed: SVM-CS, dotted: ProtoNet, ± 95 % CI)")
    figs[PLOTS[1]][0].suptitle("accuracy against the features a task uses")
    for ci, (way, shot) in enumerate(combos):
        ax = figs[PLOTS[2]][1][0, ci]
        for m in measured:
            r = m.row
            if m.usage is not None and (r["way"], r["shot"]) == (way, shot):
                seed = "" if r.get("seed") is None else f" s{r['seed']}"
                curve = 100 * np.sort(m.usage)[::-1]
                ax.plot(np.arange(1, curve.size + 1), curve, label=f"{r['lam_ratio']:g}{seed}")
        ax.set(
            xlabel="features, most used first",
            ylabel="episodes using it (%)",
            title=f"{way}-way {shot}-shot",
        )
    figs[PLOTS[2]][0].suptitle("per-feature usage, one curve per λ1/λ_max")
    written = []
    for name, (fig, axes) in figs.items():
        for ax in axes.flat:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        written.append(_save(fig, out / name))
    written += [_support_picture(measured, way, shot, out) for way, shot in combos]
    return [p for p in written if p is not None]


def _support_picture(measured: list[Measured], way: int, shot: int, out: Path) -> Path | None:
    """Which features each of the first episodes uses, one panel per setting; features in the
    order of their usage at the densest setting, so that the ones dropped show as columns."""
    import matplotlib.pyplot as plt

    here = [
        m for m in measured if m.first is not None and (m.row["way"], m.row["shot"]) == (way, shot)
    ]
    if not here:
        return None
    here.sort(key=lambda m: (m.row["lam_ratio"], m.row.get("seed") or 0))
    order = np.argsort(-here[0].usage, kind="stable")
    fig, axes = plt.subplots(len(here), 1, figsize=(8, 1.2 + 1.1 * len(here)), squeeze=False)
    for ax, m in zip(axes[:, 0], here, strict=True):
        ax.imshow(m.first[:, order], aspect="auto", interpolation="nearest", cmap="Greys")
        seed = "" if m.row.get("seed") is None else f", seed {m.row['seed']}"
        ax.set_ylabel("episode", fontsize=7)
        ax.set_title(f"λ1/λ_max = {m.row['lam_ratio']:g}{seed}", fontsize=8)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("feature (most used at the smallest λ1/λ_max first)")
    fig.suptitle(f"features used per episode (black), {way}-way {shot}-shot")
    return _save(fig, out / f"support_{way}w{shot}s.png")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def hparams(rows: list[dict[str, Any]], logdir: Path) -> None:
    """TensorBoard's hparams view: one run per setting × seed, its test accuracies as metrics."""
    from torch.utils.tensorboard import SummaryWriter

    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r.get("seed")), []).append(r)
    with SummaryWriter(str(logdir)) as writer:
        for (setting, seed), these in groups.items():
            first = these[0]
            params = {
                "setting": setting,
                "head": first["head"],
                "lam_ratio": -1.0 if first["lam_ratio"] is None else float(first["lam_ratio"]),
                "seed": -1 if seed is None else int(seed),
            }
            metrics = {}
            for r in these:
                tag = f"{r['way']}w{r['shot']}s"
                metrics[f"accuracy/{tag}"] = float(r["accuracy"])
                if r.get("features_proven_unused_mean") is not None:
                    metrics[f"features_used/{tag}"] = 1.0 - float(r["features_proven_unused_mean"])
            name = setting if seed is None else f"{setting}-seed{seed}"
            writer.add_hparams(params, metrics, run_name=name)
