"""MCC and DCI on constructed cases: identity up to permutation/scaling, rotations, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from metasparse.metrics import correlation_matrix, dci, mcc, mcc_matching


def _factors(n: int = 2000, m: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, m))


def test_mcc_permuted_and_scaled_factors_is_one() -> None:
    z = _factors()
    perm = np.array([3, 0, 4, 1, 2])
    scales = np.array([-2.0, 0.5, 3.0, -0.1, 7.0])
    z_hat = z[:, perm] * scales + 4.0
    res = mcc_matching(z, z_hat)
    assert res.value == pytest.approx(1.0, abs=1e-12)
    # the matching recovers the permutation: factor perm[c] sits in code c
    assert np.array_equal(perm[res.cols], res.rows)


def test_mcc_spearman_is_invariant_to_monotone_maps_but_pearson_is_not() -> None:
    z = _factors()
    z_hat = np.exp(4.0 * z[:, ::-1])  # monotone, strongly non-linear, reversed order
    assert mcc(z, z_hat, method="spearman") == pytest.approx(1.0, abs=1e-12)
    assert mcc(z, z_hat, method="pearson") < 0.95


def test_mcc_random_rotation_is_clearly_below_one() -> None:
    z = _factors(m=6)
    q = ortho_group.rvs(6, random_state=1)
    value = mcc(z, z @ q.T)
    assert value < 0.8


def test_mcc_independent_noise_is_near_zero() -> None:
    z = _factors(n=5000)
    noise = np.random.default_rng(5).normal(size=z.shape)
    assert mcc(z, noise) < 0.1


def test_mcc_rectangular_matches_min_dimension() -> None:
    z = _factors(m=3)
    extra = np.random.default_rng(2).normal(size=(z.shape[0], 2))
    z_hat = np.concatenate([extra[:, :1], z[:, [2, 0, 1]], extra[:, 1:]], axis=1)
    res = mcc_matching(z, z_hat)
    assert len(res.rows) == 3
    assert res.value == pytest.approx(1.0, abs=1e-12)


def test_correlation_matrix_constant_code_has_zero_correlation() -> None:
    z = _factors(m=2)
    z_hat = np.stack([z[:, 0], np.ones(len(z))], axis=1)
    corr = correlation_matrix(z, z_hat)
    assert corr[:, 1].tolist() == [0.0, 0.0]
    assert corr[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("z", "z_hat", "match"),
    [
        (np.zeros((10, 2)), np.zeros((9, 2)), "same number of samples"),
        (np.zeros((10, 2, 1)), np.zeros((10, 2)), "2-D"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), "finite"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "at least 3 samples"),
    ],
)
def test_mcc_rejects_bad_input(z: np.ndarray, z_hat: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mcc(z, z_hat)


def test_mcc_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="pearson"):
        mcc(_factors(), _factors(), method="kendall")


@pytest.mark.parametrize("regressor", ["lasso", "gbt"])
def test_dci_permuted_and_scaled_factors(regressor: str) -> None:
    z = _factors(n=1000, m=4)
    z_hat = z[:, [2, 3, 0, 1]] * np.array([3.0, -0.2, 1.0, 10.0])
    scores = dci(z, z_hat, regressor=regressor)
    assert scores.disentanglement > 0.95
    assert scores.completeness > 0.95
    assert scores.informativeness > 0.95
    # the importance matrix puts each factor on its own code
    assert np.array_equal(scores.importance.argmax(axis=0), [2, 3, 0, 1])


def test_dci_rotation_is_clearly_below_one_but_informative() -> None:
    z = _factors(n=1000, m=4)
    q = ortho_group.rvs(4, random_state=3)
    scores = dci(z, z @ q.T)
    assert scores.disentanglement < 0.7
    assert scores.completeness < 0.7
    assert scores.informativeness > 0.95  # a rotation loses no information


def test_dci_rejects_bad_arguments() -> None:
    z = _factors(n=100, m=2)
    with pytest.raises(ValueError, match="test_fraction"):
        dci(z, z, test_fraction=1.5)
    with pytest.raises(ValueError, match="regressor"):
        dci(z, z, regressor="forest")
