"""The figure of the disentanglement study (:mod:`metasparse.synthetic.disentangle`): MCC and
DCI disentanglement against λ/λ_max, from the rows :func:`.disentangle.run_study` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def aggregate(rows: list[dict[str, Any]], key: str = "mcc") -> dict[tuple[str, str, float], tuple]:
    """Mean and standard error of ``key`` over seeds per (setting, head, ratio)."""
    groups: dict[tuple[str, str, float], list[float]] = {}
    for r in rows:
        ratio = -1.0 if r["head"] == "ridge" else r["lam_ratio"]
        groups.setdefault((r["setting"], r["head"], ratio), []).append(r[key])
    out = {}
    for k, vals in groups.items():
        arr = np.asarray(vals, dtype=float)
        se = float(arr.std(ddof=1) / np.sqrt(arr.size)) if arr.size > 1 else 0.0
        out[k] = (float(arr.mean()), se)
    return out


def plot_mcc_vs_ratio(rows: list[dict[str, Any]], path: Path) -> None:
    """MCC (left) and DCI disentanglement (right) vs λ/λ_max for each setting, Ridge baselines
    (with/without FastICA) as horizontal lines, initial MCC dotted."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown")
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    for ax, key, label in (
        (axes[0], "mcc", "MCC (Pearson)"),
        (axes[1], "dci_disentanglement", "DCI disentanglement"),
    ):
        agg = aggregate(rows, key)
        agg_ica = aggregate(rows, "mcc_ica") if key == "mcc" else {}
        agg_init = aggregate(rows, "mcc_init") if key == "mcc" else {}
        for i, st in enumerate(settings):
            c = colors[i % len(colors)]
            for head, marker, name in (("lasso", "o", "Lasso"), ("svm", "s", "group-sparse SVM")):
                pts = sorted((k[2], v) for k, v in agg.items() if k[0] == st and k[1] == head)
                if pts:
                    ax.errorbar(
                        [p[0] for p in pts],
                        [p[1][0] for p in pts],
                        yerr=[p[1][1] for p in pts],
                        color=c,
                        marker=marker,
                        ls="-" if head == "lasso" else (0, (5, 1)),
                        capsize=3,
                        label=f"{st}: {name} heads",
                    )
            if (st, "ridge", -1.0) in agg:
                ax.axhline(
                    agg[(st, "ridge", -1.0)][0],
                    color=c,
                    ls="--",
                    lw=1.2,
                    label=f"{st}: Ridge heads",
                )
            if (st, "ridge", -1.0) in agg_ica:
                ax.axhline(
                    agg_ica[(st, "ridge", -1.0)][0],
                    color=c,
                    ls="-.",
                    lw=1.2,
                    label=f"{st}: Ridge + FastICA",
                )
            if agg_init:
                init = np.mean([v[0] for k, v in agg_init.items() if k[0] == st])
                ax.axhline(init, color=c, ls=":", lw=1.0, label=f"{st}: at initialization")
        ax.set_xscale("log")
        ratios = sorted({r["lam_ratio"] for r in rows if r["head"] != "ridge"})  # sparse heads
        ax.set_xticks(ratios, [f"{r:g}" for r in ratios])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("inner λ / λ_max")
        ax.set_ylabel(label)
        ax.set_ylim(0.0, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=len(settings))
    fig.suptitle("Sparse multi-task learning: learned vs true factors (mean ± s.e. over seeds)")
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
