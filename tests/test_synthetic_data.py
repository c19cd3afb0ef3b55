"""The synthetic generators respect their specs: supports, correlations, invertible mixings."""

from __future__ import annotations

import numpy as np
import pytest

from metasparse.synthetic.data import (
    TaskSpec,
    equicorrelation,
    make_mixing,
    random_invertible,
    random_orthogonal,
    sample_latents,
    sample_sparse_weights,
    sample_supports,
    sample_tasks,
)


def test_support_frequencies_match_bernoulli_conditioned_on_nonempty() -> None:
    rng = np.random.default_rng(0)
    m, p, t = 6, 0.25, 40000
    s = sample_supports(rng, t, m, p)
    assert s.shape == (t, m) and s.dtype == bool
    assert s.any(axis=1).all()
    expected = p / (1.0 - (1.0 - p) ** m)  # P(j ∈ S | S ≠ ∅)
    np.testing.assert_allclose(s.mean(axis=0), expected, atol=0.01)
    # factors are used independently of each other apart from the non-emptiness conditioning
    both = (s[:, 0] & s[:, 1]).mean()
    assert both == pytest.approx(p * p / (1.0 - (1.0 - p) ** m), abs=0.01)


def test_empty_supports_are_redrawn_per_task_not_fixed_once() -> None:
    rng = np.random.default_rng(1)
    m, p, t = 5, 0.05, 5000  # most first draws are empty
    s = sample_supports(rng, t, m, p)
    assert s.any(axis=1).all()
    # redrawn rows are fresh Bernoulli draws: every factor appears, mostly alone, in many patterns
    assert (s.sum(axis=1) == 1).mean() > 0.8
    freq = s.mean(axis=0)
    assert freq.min() > 0.15 and freq.max() < 0.3
    assert len({row.tobytes() for row in s}) >= m


def test_coupled_factors_are_always_used_together() -> None:
    rng = np.random.default_rng(2)
    s = sample_supports(rng, 2000, 5, 0.3, coupled=((0, 1), (2, 4)))
    assert np.array_equal(s[:, 0], s[:, 1])
    assert np.array_equal(s[:, 2], s[:, 4])
    assert s.any(axis=1).all()
    assert 0.2 < s[:, 0].mean() < 0.6  # still random, not constant
    chained = sample_supports(rng, 500, 5, 0.3, coupled=((0, 1), (1, 2), (2, 3)))
    assert (chained[:, :4] == chained[:, :1]).all()  # chains tie a whole block together


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prob": 0.0}, "support probability"),
        ({"prob": 0.5, "coupled": ((0, 0),)}, "coupled pair"),
        ({"prob": 0.5, "coupled": ((0, 9),)}, "coupled pair"),
    ],
)
def test_supports_reject_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_supports(np.random.default_rng(0), 10, 5, **kwargs)


def test_weights_are_zero_exactly_off_support() -> None:
    rng = np.random.default_rng(3)
    s = sample_supports(rng, 100, 6, 0.4)
    w = sample_sparse_weights(rng, s, n_outputs=3)
    assert w.shape == (100, 6, 3)
    assert np.array_equal(np.abs(w).sum(axis=2) > 0, s)


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
@pytest.mark.parametrize("rho", [0.0, 0.9, -0.2])
def test_latent_correlations_and_unit_variance(distribution: str, rho: float) -> None:
    z = sample_latents(np.random.default_rng(4), 100000, 4, rho, distribution)
    corr = np.corrcoef(z, rowvar=False)
    np.testing.assert_allclose(corr, equicorrelation(4, rho), atol=0.015)
    np.testing.assert_allclose(z.var(axis=0), 1.0, atol=0.03)
    if distribution == "uniform":
        assert np.abs(z).max() <= np.sqrt(3.0)


def test_latents_reject_impossible_correlation() -> None:
    with pytest.raises(ValueError, match="equicorrelation"):
        sample_latents(np.random.default_rng(0), 10, 5, -0.5)
    with pytest.raises(ValueError, match="distribution"):
        sample_latents(np.random.default_rng(0), 10, 5, 0.0, "laplace")


def test_random_orthogonal_and_invertible_matrices() -> None:
    rng = np.random.default_rng(5)
    q = random_orthogonal(rng, 7)
    np.testing.assert_allclose(q @ q.T, np.eye(7), atol=1e-12)
    a = random_invertible(rng, 7, max_scale=2.0)
    sv = np.linalg.svd(a, compute_uv=False)
    assert sv.min() >= 0.5 - 1e-12 and sv.max() <= 2.0 + 1e-12
    assert not np.allclose(a @ a.T, np.eye(7), atol=0.1)


@pytest.mark.parametrize(
    ("kind", "layer"), [("linear", "orthogonal"), ("mlp", "orthogonal"), ("mlp", "triangular")]
)
def test_mixing_is_invertible_and_mixes(kind: str, layer: str) -> None:
    rng = np.random.default_rng(6)
    g = make_mixing(rng, 5, kind, n_layers=3, layer=layer)
    z = sample_latents(rng, 3000, 5)
    x = g(z)
    np.testing.assert_allclose(g.inverse(x), z, atol=1e-9)
    assert np.isfinite(g.log_abs_det_jacobian(z)).all()
    # every observation depends on several factors (the map is not already disentangled)
    corr = np.abs(np.corrcoef(z, x, rowvar=False)[:5, 5:])
    assert corr.max(axis=0).max() < 0.95
    if kind == "mlp":  # genuinely non-linear: a linear fit leaves residuals
        coef, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], x, rcond=None)
        resid = x - np.c_[z, np.ones(len(z))] @ coef
        assert resid.var() > 1e-3 * x.var()


def test_mixing_log_det_matches_numerical_jacobian() -> None:
    rng = np.random.default_rng(7)
    g = make_mixing(rng, 4, "mlp", n_layers=3)
    z0 = sample_latents(rng, 3, 4)
    eps = 1e-6
    for z in z0:
        jac = np.stack([(g(z + eps * e) - g(z - eps * e)) / (2 * eps) for e in np.eye(4)], 1)
        assert g.log_abs_det_jacobian(z[None])[0] == pytest.approx(
            np.linalg.slogdet(jac)[1], abs=1e-5
        )


def test_mixing_rejects_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="mixing"):
        make_mixing(rng, 3, "flow")
    with pytest.raises(ValueError, match="slope"):
        make_mixing(rng, 3, "mlp", slope=0.0)
    with pytest.raises(ValueError, match="n_layers"):
        make_mixing(rng, 3, "mlp", n_layers=1)


def test_sample_tasks_shapes_and_targets() -> None:
    rng = np.random.default_rng(8)
    spec = TaskSpec(n_factors=4, n_outputs=2, noise_std=0.0, support_prob=0.5)
    g = make_mixing(rng, 4, "linear")
    b = sample_tasks(rng, spec, g, n_tasks=6, n_support=7, n_query=9)
    assert b.x_support.shape == (6, 7, 4) and b.y_query.shape == (6, 9, 2)
    np.testing.assert_allclose(b.x_query, g(b.z_query.reshape(-1, 4)).reshape(6, 9, 4))
    np.testing.assert_allclose(b.y_support, np.einsum("tnm,tmk->tnk", b.z_support, b.weights))
    # different tasks see different factor samples
    assert not np.allclose(b.z_support[0], b.z_support[1])
