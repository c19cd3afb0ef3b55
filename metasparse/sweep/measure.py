"""One sweep setting on one feature dataset: accuracy per episode and trustworthy sparsity.

Every setting of a sweep is measured on the same fixed, seeded episodes, so their accuracies can
be compared episode by episode (paired differences). For the group-sparse head, the features a
task uses are decided by the gap-safe test of :mod:`metasparse.solvers.svm.screening`: features
the test leaves undetermined at the head's tolerance are decided by a float64 solve at a much
tighter one (statistics only; the accuracy is that of the head as it runs).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metasparse.data import FewShotDataset
from metasparse.evaluation import head_classifier, run_episodes
from metasparse.heads.base import check_episode
from metasparse.heads.group_sparse_svm import GroupSparseSVMHead
from metasparse.heads.svm_cs import SVMCSHead
from metasparse.solvers.svm.screening import screen_features
from metasparse.utils import atomic_write_bytes, mean_ci95

SPARSE = "group_sparse_svm"
# tolerances of the float64 re-solves that decide undetermined features, in turn, each warm-started
# from the last: most episodes are decided at 1e-7, and one re-solve to 1e-10 from the head's
# dual costs 0.3-0.5× the cold one (20-way 1- and 5-shot, 5-way 5-shot, p = 64)
TIGHT_TOLS = (1e-7, 1e-10)
TIGHT_MAX_ITER = 20000
FIRST_EPISODES = 40  # episodes whose support masks are kept for the picture


@dataclass
class Measured:
    """A setting's row (see ``report.CSV_FIELDS``) and its per-feature arrays."""

    row: dict[str, Any]
    usage: np.ndarray | None = None  # (p,) fraction of episodes in which each feature is used
    first: np.ndarray | None = None  # (≤ FIRST_EPISODES, p) bool: used in each of those episodes
    extra: dict[str, Any] = field(default_factory=dict)


def save_arrays(path: Path, measured: list[Measured], usage_dtype: Any = None) -> None:
    """The per-feature arrays of ``measured`` as one ``.npz`` (``usage_<i>``, ``first_<i>`` for
    row ``i``), written atomically."""
    arrays = {}
    for i, m in enumerate(measured):
        if m.usage is not None:
            arrays[f"usage_{i}"] = m.usage if usage_dtype is None else m.usage.astype(usage_dtype)
            arrays[f"first_{i}"] = m.first
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_arrays(path: Path, rows: list[dict[str, Any]]) -> list[Measured]:
    """``rows`` with the arrays :func:`save_arrays` wrote for them."""
    arrays = np.load(path)
    return [
        Measured(row, arrays.get(f"usage_{i}"), arrays.get(f"first_{i}"))
        for i, row in enumerate(rows)
    ]


def settings(ratios: list[float], baselines: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, head name, head options) for each ratio, then each baseline head."""
    for r in ratios:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"--ratios must lie in [0, 1] (λ1/λ_max), got {r}")
    out = [(f"{SPARSE}@{r:g}", SPARSE, {"lam_ratio": float(r)}) for r in ratios]
    return out + [(name, name, {}) for name in baselines]


def certified_svm_cs(head: SVMCSHead) -> GroupSparseSVMHead:
    """SVM-CS's own problem (its C, jitter and learned logit scale) solved by the certified
    solver at λ1 = 0 (``docs/method.md`` §2): qpth's 20-way episodes take seconds each."""
    exact = GroupSparseSVMHead(lam_ratio=0.0, lam2=1.0 / head.C_reg, tau=head.jitter * head.C_reg)
    exact.load_state_dict(head.state_dict(), strict=False)  # the learned logit scale
    return exact


class _SparseClassifier:
    """Logits of a group-sparse head, plus the gap-safe support of every episode it solves."""

    def __init__(self, head: GroupSparseSVMHead, way: int) -> None:
        self.head, self.way = head, way
        self.masks: list[np.ndarray] = []  # per episode: not provably unused at the optimum
        self.per_task: dict[str, list[float]] = {
            k: []
            for k in (
                "features_used",
                "features_proven_used",
                "features_proven_unused",
                "features_undetermined",
                "features_undetermined_at_tol",
                "tightened",
            )
        }

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        q, s, y = batch["query"], batch["support"], batch["support_labels"]
        check_episode(q, s, y, self.way)
        head = self.head
        res = head.solve(s, y, self.way)
        logits = (q @ res.weights.to(q.dtype).transpose(1, 2)) * head.logit_scale()
        scr = screen_features(s, y, self.way, res.dual, res.lam1, head.lam2, head.tau)
        at_tol = scr.undetermined.double().mean(-1)
        fractions = scr.fractions()
        tightened = torch.zeros(s.shape[0], dtype=torch.float64)
        open_tasks = scr.undetermined.any(-1).nonzero().flatten()
        init = res.dual.detach()[open_tasks].double()
        for tol in TIGHT_TOLS:
            if not open_tasks.numel():
                break
            s64 = s[open_tasks].double()
            tight = head.solve(
                s64,
                y[open_tasks],
                self.way,
                lam_ratio=None,
                lam1=res.lam1[open_tasks].double(),
                tol=tol,
                max_iter=TIGHT_MAX_ITER,
                init=init,
            )
            t_scr = screen_features(
                s64, y[open_tasks], self.way, tight.dual, tight.lam1, head.lam2, head.tau
            )
            for key, value in t_scr.fractions().items():
                if key != "features_used":  # "used" stays what the head used
                    fractions[key][open_tasks] = value
            scr.proven_unused[open_tasks] = t_scr.proven_unused
            tightened[open_tasks] = 1.0
            still = t_scr.undetermined.any(-1)
            open_tasks, init = open_tasks[still], tight.dual.detach()[still]
        used_fraction = res.features_used.double().cpu()
        self.per_task["features_used"] += used_fraction.tolist()
        for key in ("features_proven_used", "features_proven_unused", "features_undetermined"):
            self.per_task[key] += fractions[key].cpu().tolist()
        self.per_task["features_undetermined_at_tol"] += at_tol.cpu().tolist()
        self.per_task["tightened"] += tightened.tolist()
        self.masks += list((~scr.proven_unused).cpu().numpy())
        stats = {
            "gap": float(res.gap.double().mean()),
            "iterations": float(res.iterations.double().mean()),
            "converged": float(res.converged.double().mean()),
            "lam1": float(res.lam1.double().mean()),
        }
        return logits, stats


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _std(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)


def measure(
    label: str,
    name: str,
    head: torch.nn.Module,
    features: FewShotDataset,
    way: int,
    shot: int,
    query: int,
    episodes: int,
    seed: int,
    device: torch.device,
    episodes_per_batch: int = 1,
    progress: bool = False,
) -> Measured:
    """Accuracy ± CI of ``head`` (registry name ``name``) on the seeded episodes, with the
    sparse head's support."""
    head = head.to(device).eval()
    sparse = isinstance(head, GroupSparseSVMHead)
    classify = _SparseClassifier(head, way) if sparse else head_classifier(head, way)
    start = time.perf_counter()
    r = run_episodes(
        classify,
        features,
        way,
        shot,
        query,
        episodes,
        seed,
        episodes_per_batch,
        device,
        progress,
        f"{label} {way}w{shot}s",
        0,
    )
    seconds = time.perf_counter() - start
    batch_stats = r["batch_stats"]

    def stat(key: str) -> float | None:
        values = [b[key] for b in batch_stats if key in b]
        return float(np.mean(values)) if values else None

    row: dict[str, Any] = {
        "setting": label,
        "head": name,
        "lam_ratio": head.lam_ratio if sparse else None,
        "way": way,
        "shot": shot,
        "episodes": r["episodes"],
        "accuracy": r["accuracy"],
        "ci95": r["ci95"],
        "lam1_mean": stat("lam1"),
        "gap_mean": stat("gap"),
        "iterations_mean": stat("iterations"),
        "converged": stat("converged"),
        "head_ms_per_episode": 1e3 * seconds / r["episodes"],
        "per_episode_accuracy": r["per_episode_accuracy"],
    }
    if not sparse:
        return Measured(row)
    pt = classify.per_task
    for key in ("features_used", "features_proven_used", "features_proven_unused"):
        row[f"{key}_mean"] = _mean(pt[key][:episodes])
    row["features_used_std"] = _std(pt["features_used"][:episodes])
    row["features_undetermined_mean"] = _mean(pt["features_undetermined"][:episodes])
    row["features_undetermined_at_tol_mean"] = _mean(pt["features_undetermined_at_tol"][:episodes])
    row["episodes_tightened"] = int(sum(pt["tightened"][:episodes]))
    masks = np.stack(classify.masks[:episodes])
    return Measured(row, usage=masks.mean(0), first=masks[:FIRST_EPISODES])


def paired_differences(rows: list[dict[str, Any]], reference: str = "svm_cs") -> None:
    """Set ``diff_vs_svm_cs`` (± its CI) on every row that has a reference row on the same
    episodes (same way, shot and training seed): the mean of the per-episode differences."""
    for row in rows:
        ref = next(
            (
                r
                for r in rows
                if r["setting"] == reference
                and (r["way"], r["shot"], r.get("seed"))
                == (row["way"], row["shot"], row.get("seed"))
            ),
            None,
        )
        if ref is None:
            continue
        a = np.asarray(row["per_episode_accuracy"])
        b = np.asarray(ref["per_episode_accuracy"])
        if a.shape != b.shape:
            raise ValueError(
                f"{row['setting']} and {reference} were not measured on the same episodes"
            )
        row["diff_vs_svm_cs"], row["diff_vs_svm_cs_ci95"] = mean_ci95(a - b)
