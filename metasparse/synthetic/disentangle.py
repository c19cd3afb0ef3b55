"""Disentanglement by sparse multi-task learning: the bi-level problem (4) on synthetic data.

An encoder ``f_θ`` (MLP) maps observations ``x = g(z)`` to features; on every task a head is
fitted on the support features (group-Lasso with ``λ = ratio · λ_max`` per task, or Ridge as the
baseline) and ``θ`` is trained on the query loss of that head. The Lasso solution is
differentiated implicitly (:mod:`metasparse.solvers.group_lasso`), never unrolled. Success is the
MCC between learned features and true factors on held-out samples (before/after training, and
after FastICA for the baselines).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from metasparse.metrics import dci, mcc, mcc_matching
from metasparse.solvers.group_lasso import GroupLassoSolver
from metasparse.solvers.svm.solve import solve_group_sparse_svm
from metasparse.synthetic.data import Mixing, TaskSpec, make_mixing, sample_latents, sample_tasks
from metasparse.synthetic.disentangle_plot import aggregate, plot_mcc_vs_ratio

__all__ = [
    "DEFAULT_SETTINGS",
    "RESULT_COLUMNS",
    "BilevelConfig",
    "Setting",
    "aggregate",
    "make_encoder",
    "plot_mcc_vs_ratio",
    "ridge_fit",
    "run_study",
    "train_bilevel",
]

HEADS = ("lasso", "ridge", "svm")
_SPARSE = ("lasso", "svm")  # heads that take a λ/λ_max ratio


@dataclass(frozen=True)
class Setting:
    """One data regime: factor correlation and pairs of factors always used together."""

    name: str
    correlation: float = 0.0
    coupled: tuple[tuple[int, int], ...] = ()


DEFAULT_SETTINGS = (
    Setting("independent", 0.0),
    Setting("correlated", 0.9),
    Setting("violated", 0.0, ((0, 1), (1, 2), (2, 3))),
)


@dataclass(frozen=True)
class BilevelConfig:
    """Everything a bi-level run needs besides the setting, head, ``λ`` ratio and seed."""

    n_factors: int = 5
    distribution: str = "uniform"
    support_prob: float = 0.3
    n_outputs: int = 1
    noise_std: float = 0.1
    mixing: str = "mlp"
    mixing_layers: int = 2
    mixing_layer: str = "orthogonal"
    n_support: int = 10
    n_query: int = 20
    tasks_per_step: int = 16
    steps: int = 150
    lr: float = 3e-3
    hidden: int = 64
    ridge_ratio: float = 0.1
    solver_tol: float = 1e-6
    solver_max_iter: int = 1000
    eval_samples: int = 2000
    eval_every: int = 50
    svm_lam2: float = 1.0
    svm_tau: float = 0.5

    def __post_init__(self) -> None:
        for name in ("n_factors", "n_outputs", "n_support", "n_query", "tasks_per_step", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.eval_samples < 20:
            raise ValueError(f"eval_samples must be >= 20, got {self.eval_samples}")
        if self.ridge_ratio <= 0:
            raise ValueError(f"ridge_ratio must be > 0, got {self.ridge_ratio}")


def make_encoder(dim_in: int, dim_out: int, hidden: int) -> nn.Module:
    """The learned representation ``f_θ``: a 3-layer leaky-ReLU MLP."""
    return nn.Sequential(
        nn.Linear(dim_in, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, dim_out),
    )


def ridge_fit(X: Tensor, Y: Tensor, ratio: float) -> Tensor:
    """Ridge ``(XᵀX/n + αI)⁻¹ XᵀY/n`` per task, ``α = ratio · tr(XᵀX/n)/p`` (scale-free).

    Closed form through a Cholesky solve (differentiable by autograd, no batched LU).
    """
    n, p = X.shape[1], X.shape[2]
    G = X.transpose(1, 2) @ X / n
    alpha = ratio * G.diagonal(dim1=1, dim2=2).mean(1)
    A = G + alpha[:, None, None] * torch.eye(p, dtype=X.dtype)
    chol = torch.linalg.cholesky(A)
    return torch.cholesky_solve(X.transpose(1, 2) @ Y / n, chol)


def _standardize(feats: Tensor) -> Tensor:
    """Zero mean, unit variance per feature over all samples of the step (fixes the free scale)."""
    flat = feats.reshape(-1, feats.shape[-1])
    return (feats - flat.mean(0)) / flat.std(0).clamp_min(1e-6)


def _encode_eval(encoder: nn.Module, x: np.ndarray) -> np.ndarray:
    """Features of held-out observations as a NumPy array."""
    with torch.no_grad():
        return encoder(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def _ica_mcc(z: np.ndarray, feats: np.ndarray, seed: int) -> float:
    """MCC after FastICA on the learned features (the classical post-hoc baseline)."""
    from sklearn.decomposition import FastICA

    ica = FastICA(n_components=z.shape[1], whiten="unit-variance", random_state=seed, max_iter=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on Gaussian-like features
        s = ica.fit_transform(feats)
    return mcc(z, s)


def _svm_query_loss(
    fs: Tensor,
    fq: Tensor,
    ys: Tensor,
    yq: Tensor,
    lam_ratio: float,
    cfg: BilevelConfig,
    log_scale: Tensor,
) -> tuple[Tensor, float]:
    """Classification variant: labels are the argmax of the task's scores, the head is the
    group-sparse SVM of the meta-learning head (implicit gradients), the loss cross-entropy."""
    labels_s = ys.argmax(-1)
    labels_q = yq.argmax(-1)
    res = solve_group_sparse_svm(
        fs.double(),
        labels_s,
        ys.shape[-1],
        lam_ratio=lam_ratio,
        lam2=cfg.svm_lam2,
        tau=cfg.svm_tau,
        tol=cfg.solver_tol,
    )
    logits = torch.exp(log_scale) * (fq @ res.weights.float().transpose(1, 2))
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels_q.reshape(-1)
    )
    return loss, float(res.features_used.mean())


def train_bilevel(
    cfg: BilevelConfig,
    setting: Setting,
    head: str,
    lam_ratio: float,
    seed: int,
    writer: Any | None = None,
) -> dict[str, Any]:
    """Train ``f_θ`` on the query loss of per-task heads; return MCC before/after and diagnostics.

    The mixing, the encoder initialization, the task stream and the evaluation samples depend
    only on ``seed``, so heads and ratios are compared on identical data.
    """
    if head not in HEADS:
        raise ValueError(f"unknown inner head {head!r}; use one of {HEADS}")
    if head == "svm" and cfg.n_outputs < 2:
        raise ValueError(
            "the classification variant (head 'svm') labels each sample by the argmax of "
            f"n_outputs task scores; pass n_outputs >= 2 (classes), got {cfg.n_outputs}"
        )
    spec = TaskSpec(
        n_factors=cfg.n_factors,
        correlation=setting.correlation,
        distribution=cfg.distribution,
        support_prob=cfg.support_prob,
        coupled=setting.coupled,
        n_outputs=cfg.n_outputs,
        noise_std=cfg.noise_std,
    )
    m = cfg.n_factors
    rng_mix = np.random.default_rng([seed, 0])
    mixing: Mixing = make_mixing(
        rng_mix, m, cfg.mixing, n_layers=cfg.mixing_layers, layer=cfg.mixing_layer
    )
    rng_eval = np.random.default_rng([seed, 1])
    z_eval = sample_latents(rng_eval, cfg.eval_samples, m, setting.correlation, cfg.distribution)
    x_eval = mixing(z_eval)
    x_scale = x_eval.std(0)
    x_shift = x_eval.mean(0)
    x_eval = (x_eval - x_shift) / x_scale
    rng_tasks = np.random.default_rng([seed, 2])
    torch.manual_seed(seed)
    encoder = make_encoder(m, m, cfg.hidden)
    log_scale = torch.zeros((), requires_grad=True)  # learnable logit scale (MetaOptNet)
    params = [*encoder.parameters(), log_scale] if head == "svm" else encoder.parameters()
    opt = torch.optim.Adam(params, lr=cfg.lr)
    solver = GroupLassoSolver(lam_ratio=lam_ratio, tol=cfg.solver_tol, max_iter=cfg.solver_max_iter)

    mcc_init = mcc(z_eval, _encode_eval(encoder, x_eval))
    if writer is not None:
        writer.add_scalar("mcc", mcc_init, 0)
    losses: list[float] = []
    active_frac: list[float] = []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        batch = sample_tasks(
            rng_tasks, spec, mixing, cfg.tasks_per_step, cfg.n_support, cfg.n_query
        )
        x = np.concatenate([batch.x_support, batch.x_query], axis=1)
        x = torch.as_tensor((x - x_shift) / x_scale, dtype=torch.float32)
        feats = _standardize(encoder(x))
        fs, fq = feats[:, : cfg.n_support], feats[:, cfg.n_support :]
        ys = torch.as_tensor(batch.y_support, dtype=torch.float32)
        yq = torch.as_tensor(batch.y_query, dtype=torch.float32)
        if head == "svm":
            loss, used = _svm_query_loss(fs, fq, ys, yq, lam_ratio, cfg, log_scale)
            active_frac.append(used)
        else:
            if head == "lasso":
                res = solver.run(fs, ys)
                W = res.W
                active_frac.append(float(res.active.float().mean()))
            else:
                W = ridge_fit(fs, ys, cfg.ridge_ratio)
            loss = ((fq @ W - yq) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if writer is not None:
            writer.add_scalar("query_loss", losses[-1], step)
            if active_frac:
                writer.add_scalar("active_fraction", active_frac[-1], step)
        if writer is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            writer.add_scalar("mcc", mcc(z_eval, _encode_eval(encoder, x_eval)), step)
    seconds = time.perf_counter() - start

    feats_eval = _encode_eval(encoder, x_eval)
    match = mcc_matching(z_eval, feats_eval)
    coupled = sorted({j for pair in setting.coupled for j in pair})
    by_factor = dict(zip(match.rows.tolist(), match.matched.tolist(), strict=True))
    tail = max(1, len(losses) // 10)
    out: dict[str, Any] = {
        "setting": setting.name,
        "correlation": setting.correlation,
        "coupled": ";".join(f"{a}-{b}" for a, b in setting.coupled),
        "head": head,
        "lam_ratio": lam_ratio if head in _SPARSE else math.nan,
        "seed": seed,
        "mcc_init": mcc_init,
        "mcc": match.value,
        "mcc_coupled": float(np.mean([by_factor[j] for j in coupled])) if coupled else math.nan,
        "mcc_ica": _ica_mcc(z_eval, feats_eval, seed),
        "query_loss": float(np.mean(losses[-tail:])) if losses else math.nan,
        "active_fraction": float(np.mean(active_frac[-tail:])) if active_frac else math.nan,
        "seconds": seconds,
    }
    out.update(dci(z_eval, feats_eval, seed=seed).as_dict())
    return out


RESULT_COLUMNS = (
    "setting",
    "correlation",
    "coupled",
    "head",
    "lam_ratio",
    "seed",
    "mcc_init",
    "mcc",
    "mcc_ica",
    "mcc_coupled",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "query_loss",
    "active_fraction",
    "seconds",
)


def _summary_line(row: dict[str, Any]) -> str:
    """One printed line per run."""
    ratio = "-" if row["head"] == "ridge" else f"{row['lam_ratio']:.3g}"
    return (
        f"{row['setting']:<12} {row['head']:<5} ratio={ratio:<5} seed={row['seed']} "
        f"MCC {row['mcc_init']:.3f} -> {row['mcc']:.3f} (after ICA {row['mcc_ica']:.3f}) "
        f"DCI-D {row['dci_disentanglement']:.2f} loss {row['query_loss']:.3f} "
        f"({row['seconds']:.0f}s)"
    )


def run_study(
    cfg: BilevelConfig,
    settings: tuple[Setting, ...],
    ratios: tuple[float, ...],
    seeds: int,
    output: Path,
    tensorboard: bool = True,
    heads: tuple[str, ...] = ("lasso", "ridge"),
) -> list[dict[str, Any]]:
    """Every setting × head (sparse heads at each ratio, Ridge once) × seed; write CSV, JSON,
    plot and TensorBoard logs."""
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; choose from {HEADS}")
    from metasparse.synthetic.generalization import write_csv
    from metasparse.utils import atomic_write_json

    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"λ ratios must be in (0, 1], got {ratios}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    for st in settings:
        for pair in st.coupled:
            if max(pair) >= cfg.n_factors:
                raise ValueError(
                    f"setting {st.name!r} couples factor {max(pair)} but there are only "
                    f"{cfg.n_factors}; pass --n-factors larger or change --coupled"
                )
    writer_cls = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer_cls = SummaryWriter
    rows: list[dict[str, Any]] = []
    runs = [(st, h, r) for h in heads if h in _SPARSE for st in settings for r in ratios]
    runs += [(st, "ridge", 1.0) for st in settings if "ridge" in heads]
    start = time.perf_counter()
    for seed in range(seeds):
        for st, head, ratio in runs:
            name = f"{st.name}_{head}" + (f"_r{ratio:g}" if head in _SPARSE else "")
            writer = (
                None
                if writer_cls is None
                else writer_cls(str(output / "tensorboard" / f"{name}_seed{seed}"))
            )
            try:
                row = train_bilevel(cfg, st, head, ratio, seed, writer)
            finally:
                if writer is not None:
                    writer.close()
            rows.append(row)
            print(_summary_line(row), flush=True)
            write_csv(output / "results.csv", rows, RESULT_COLUMNS)
    atomic_write_json(
        output / "results.json",
        {
            "config": asdict(cfg),
            "settings": [asdict(st) for st in settings],
            "ratios": list(ratios),
            "seeds": seeds,
            "seconds": time.perf_counter() - start,
            "runs": rows,
        },
    )
    plot_mcc_vs_ratio(rows, output / "mcc_vs_ratio.png")
    return rows
