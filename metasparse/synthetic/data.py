"""Synthetic data of the paper's studies: latent factors, sparse task supports, invertible mixings.

Everything is NumPy (float64) driven by an explicit ``np.random.Generator``, so a seed fixes a
whole study. Conventions: samples are rows; ``z`` are the ground-truth factors (``n × m``),
``x = g(z)`` the observations, task weights ``W_t ∈ R^{m×K}`` are zero outside the task support.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

__all__ = [
    "LATENT_DISTRIBUTIONS",
    "MIXING_KINDS",
    "Mixing",
    "TaskBatch",
    "TaskSpec",
    "equicorrelation",
    "make_mixing",
    "random_invertible",
    "random_orthogonal",
    "sample_latents",
    "sample_sparse_weights",
    "sample_supports",
    "sample_tasks",
]

LATENT_DISTRIBUTIONS = ("uniform", "gaussian")
MIXING_KINDS = ("linear", "mlp")
_LAYER_KINDS = ("orthogonal", "triangular")


def equicorrelation(m: int, rho: float) -> np.ndarray:
    """The ``m × m`` correlation matrix with every off-diagonal entry ``rho``."""
    if m < 1:
        raise ValueError(f"number of factors must be >= 1, got {m}")
    low = -1.0 / (m - 1) if m > 1 else -1.0
    if not low < rho < 1.0:
        raise ValueError(
            f"correlation {rho} makes the {m}×{m} equicorrelation matrix singular or indefinite; "
            f"pass a value in ({low:.3g}, 1)"
        )
    return (1.0 - rho) * np.eye(m) + rho * np.ones((m, m))


def sample_latents(
    rng: np.random.Generator,
    n: int,
    m: int,
    correlation: float = 0.0,
    distribution: str = "uniform",
) -> np.ndarray:
    """Draw ``n`` samples of ``m`` unit-variance factors, pairwise correlated by ``correlation``.

    ``gaussian``: a correlated normal. ``uniform``: a Gaussian copula with uniform marginals on
    ``[-√3, √3]``; the copula parameter is ``2 sin(π ρ / 6)`` so that the Pearson correlation of
    the uniforms is exactly ``ρ`` (non-Gaussian factors let ICA work when they are independent).
    """
    if distribution not in LATENT_DISTRIBUTIONS:
        raise ValueError(
            f"unknown latent distribution {distribution!r}; use one of {LATENT_DISTRIBUTIONS}"
        )
    rho_gauss = correlation if distribution == "gaussian" else 2.0 * np.sin(np.pi * correlation / 6)
    chol = np.linalg.cholesky(equicorrelation(m, rho_gauss))
    g = rng.standard_normal((n, m)) @ chol.T
    if distribution == "gaussian":
        return g
    return np.sqrt(3.0) * (2.0 * norm.cdf(g) - 1.0)


def _check_pairs(coupled: tuple[tuple[int, int], ...], m: int) -> None:
    """Coupled factor pairs must name two distinct factors in range."""
    for pair in coupled:
        if len(pair) != 2 or pair[0] == pair[1] or not all(0 <= j < m for j in pair):
            raise ValueError(
                f"coupled pair {pair} is invalid: give two distinct factor indices in [0, {m})"
            )


def sample_supports(
    rng: np.random.Generator,
    n_tasks: int,
    m: int,
    prob: float,
    coupled: tuple[tuple[int, int], ...] = (),
) -> np.ndarray:
    """Task supports: a bool ``n_tasks × m`` matrix, factor ``j`` used by a task with prob ``prob``.

    A task whose support comes out empty is redrawn (its own row, as often as needed), so every
    task uses at least one factor and no single fix is shared by the batch. For each pair
    ``(a, b)`` in ``coupled``, factor ``b`` is used exactly when ``a`` is: the support-variability
    assumption is then violated (no task tells the two apart).
    """
    if not 0.0 < prob <= 1.0:
        raise ValueError(f"support probability must be in (0, 1], got {prob}")
    _check_pairs(coupled, m)

    def draw(k: int) -> np.ndarray:
        s = rng.random((k, m)) < prob
        for a, b in coupled:
            s[:, b] = s[:, a]
        return s

    supports = draw(n_tasks)
    empty = ~supports.any(axis=1)
    while empty.any():
        supports[empty] = draw(int(empty.sum()))
        empty = ~supports.any(axis=1)
    return supports


def sample_sparse_weights(
    rng: np.random.Generator, supports: np.ndarray, n_outputs: int = 1
) -> np.ndarray:
    """Standard-normal weights ``n_tasks × m × n_outputs``, zero on rows outside each support."""
    t, m = supports.shape
    return rng.standard_normal((t, m, n_outputs)) * supports[:, :, None]


def random_orthogonal(rng: np.random.Generator, m: int) -> np.ndarray:
    """A Haar-distributed random orthogonal ``m × m`` matrix (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((m, m)))
    return q * np.sign(np.diag(r))


def random_invertible(rng: np.random.Generator, m: int, max_scale: float = 2.0) -> np.ndarray:
    """A random invertible, non-orthogonal ``Q1 diag(s) Q2`` with ``s`` log-uniform in
    ``[1/max_scale, max_scale]`` (condition number at most ``max_scale²``)."""
    if max_scale < 1.0:
        raise ValueError(f"max_scale must be >= 1, got {max_scale}")
    s = np.exp(rng.uniform(-np.log(max_scale), np.log(max_scale), size=m))
    return (random_orthogonal(rng, m) * s) @ random_orthogonal(rng, m)


def _triangular_layer(rng: np.random.Generator, m: int) -> np.ndarray:
    """A lower-triangular matrix (diagonal magnitudes in [0.5, 1.5]) followed by a permutation."""
    low = np.tril(rng.standard_normal((m, m)) / np.sqrt(m), k=-1)
    diag = rng.uniform(0.5, 1.5, size=m) * rng.choice([-1.0, 1.0], size=m)
    return (low + np.diag(diag))[rng.permutation(m)]


@dataclass(frozen=True)
class Mixing:
    """An invertible map ``x = g(z)``: affine layers with leaky-ReLU between them (not after the
    last); each layer matrix is square and invertible, the leaky ReLU is a bijection."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    slope: float = 0.2

    def __call__(self, z: np.ndarray) -> np.ndarray:
        """Apply ``g`` to the rows of ``z``."""
        h = np.asarray(z, dtype=np.float64)
        for i, (a, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ a.T + b
            if i < len(self.weights) - 1:
                h = np.where(h > 0, h, self.slope * h)
        return h

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Apply ``g⁻¹`` to the rows of ``x`` (used to check invertibility)."""
        h = np.asarray(x, dtype=np.float64)
        for i in reversed(range(len(self.weights))):
            if i < len(self.weights) - 1:
                h = np.where(h > 0, h, h / self.slope)
            h = np.linalg.solve(self.weights[i], (h - self.biases[i]).T).T
        return h

    def log_abs_det_jacobian(self, z: np.ndarray) -> np.ndarray:
        """``log |det ∂g/∂z|`` at each row of ``z`` (finite everywhere: ``g`` is invertible)."""
        h = np.asarray(z, dtype=np.float64)
        out = np.zeros(h.shape[0])
        for i, (a, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            out += np.linalg.slogdet(a)[1]
            h = h @ a.T + b
            if i < len(self.weights) - 1:
                out += np.where(h > 0, 0.0, np.log(self.slope)).sum(axis=1)
                h = np.where(h > 0, h, self.slope * h)
        return out


def make_mixing(
    rng: np.random.Generator,
    m: int,
    kind: str = "mlp",
    n_layers: int = 3,
    layer: str = "orthogonal",
    slope: float = 0.2,
) -> Mixing:
    """A fixed random invertible mixing of ``m`` factors into ``m`` observations.

    ``linear``: one well-conditioned invertible matrix (:func:`random_invertible`). ``mlp``:
    ``n_layers`` affine layers with leaky-ReLU(``slope``) between them, each matrix either
    ``orthogonal`` (Q·diag(s), s in [1/2, 2]) or ``triangular`` (lower-triangular then permuted).
    """
    if kind not in MIXING_KINDS:
        raise ValueError(f"unknown mixing {kind!r}; use one of {MIXING_KINDS}")
    if layer not in _LAYER_KINDS:
        raise ValueError(f"unknown mixing layer {layer!r}; use one of {_LAYER_KINDS}")
    if not 0.0 < slope < 1.0:
        raise ValueError(f"leaky-ReLU slope must be in (0, 1) to stay invertible, got {slope}")
    if kind == "linear":
        return Mixing((random_invertible(rng, m),), (np.zeros(m),), slope)
    if n_layers < 2:
        raise ValueError(f"an MLP mixing needs n_layers >= 2, got {n_layers}; or use 'linear'")
    weights, biases = [], []
    for _ in range(n_layers):
        if layer == "orthogonal":
            s = np.exp(rng.uniform(-np.log(2.0), np.log(2.0), size=m))
            a = random_orthogonal(rng, m) * s
        else:
            a = _triangular_layer(rng, m)
        weights.append(a)
        biases.append(0.5 * rng.standard_normal(m))
    return Mixing(tuple(weights), tuple(biases), slope)


@dataclass(frozen=True)
class TaskSpec:
    """How the tasks of the disentanglement study are drawn (see :func:`sample_tasks`)."""

    n_factors: int = 5
    correlation: float = 0.0
    distribution: str = "uniform"
    support_prob: float = 0.3
    coupled: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    n_outputs: int = 1
    noise_std: float = 0.1


@dataclass(frozen=True)
class TaskBatch:
    """``T`` regression tasks; support/query sets share the task's weights."""

    z_support: np.ndarray  # T × n_s × m
    x_support: np.ndarray  # T × n_s × m
    y_support: np.ndarray  # T × n_s × K
    z_query: np.ndarray  # T × n_q × m
    x_query: np.ndarray  # T × n_q × m
    y_query: np.ndarray  # T × n_q × K
    supports: np.ndarray  # T × m (bool)
    weights: np.ndarray  # T × m × K


def sample_tasks(
    rng: np.random.Generator,
    spec: TaskSpec,
    mixing: Mixing,
    n_tasks: int,
    n_support: int,
    n_query: int,
) -> TaskBatch:
    """Draw ``n_tasks`` tasks ``y = W_tᵀ z + noise`` with fresh factors per task, ``x = g(z)``."""
    if n_tasks < 1 or n_support < 1 or n_query < 1:
        raise ValueError(
            f"need n_tasks, n_support, n_query >= 1, got {n_tasks}, {n_support}, {n_query}"
        )
    m = spec.n_factors
    supports = sample_supports(rng, n_tasks, m, spec.support_prob, spec.coupled)
    weights = sample_sparse_weights(rng, supports, spec.n_outputs)
    n = n_support + n_query
    z = sample_latents(rng, n_tasks * n, m, spec.correlation, spec.distribution)
    x = mixing(z).reshape(n_tasks, n, m)
    z = z.reshape(n_tasks, n, m)
    y = np.einsum("tnm,tmk->tnk", z, weights)
    y = y + spec.noise_std * rng.standard_normal(y.shape)
    return TaskBatch(
        z[:, :n_support],
        x[:, :n_support],
        y[:, :n_support],
        z[:, n_support:],
        x[:, n_support:],
        y[:, n_support:],
        supports,
        weights,
    )
