"""The gap-safe feature test: what it proves at the head's tolerance holds at the optimum."""

from __future__ import annotations

import pytest
import torch

from metasparse.solvers.group_sparse_svm import solve_group_sparse_svm
from metasparse.solvers.svm.screening import screen_features

LAM2, TAU = 10.0, 0.1


def _episodes(tasks=4, way=5, shot=5, p=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.relu(torch.randn(tasks, way * shot, p, generator=g))
    y = torch.arange(way).repeat_interleave(shot).expand(tasks, -1).contiguous()
    return X, y, way


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.9, 0.99])
def test_features_proven_unused_are_zero_and_proven_used_nonzero_at_a_tight_solve(ratio):
    X, y, way = _episodes()
    res = solve_group_sparse_svm(X, y, way, lam_ratio=ratio, lam2=LAM2, tau=TAU, tol=1e-5)
    scr = screen_features(X, y, way, res.dual, res.lam1, LAM2, TAU)
    tight = solve_group_sparse_svm(
        X.double(), y, way, lam1=res.lam1.double(), lam2=LAM2, tau=TAU, tol=1e-12, max_iter=50000
    )
    assert bool(tight.converged.all())
    nonzero = (tight.weights != 0).any(1)
    assert not (nonzero & scr.proven_unused).any()
    assert not (~nonzero & scr.proven_used).any()
    # the three classes partition the features
    assert torch.equal(
        scr.proven_used ^ scr.proven_unused ^ scr.undetermined, torch.ones_like(nonzero)
    )
    # at a 1e-12 gap the test decides every feature of these episodes
    t_scr = screen_features(X.double(), y, way, tight.dual, tight.lam1, LAM2, TAU)
    assert not t_scr.undetermined.any()
    assert torch.equal(t_scr.proven_used, nonzero)


def test_a_point_near_lam_max_within_tolerance_is_not_taken_for_the_support():
    # near λ_max, W = 0 is within 1e-5 of optimal while the optimum uses a feature: the test
    # must leave that feature undetermined instead of proving it unused
    X, y, way = _episodes(tasks=1)
    res = solve_group_sparse_svm(X, y, way, lam_ratio=0.99, lam2=LAM2, tau=TAU, tol=1e-5)
    tight = solve_group_sparse_svm(
        X.double(), y, way, lam1=res.lam1.double(), lam2=LAM2, tau=TAU, tol=1e-12, max_iter=50000
    )
    at_optimum = (tight.weights != 0).any(1)
    assert at_optimum.any() and not (res.weights != 0).any()
    scr = screen_features(X, y, way, res.dual, res.lam1, LAM2, TAU)
    assert scr.undetermined[at_optimum].all()


def test_without_smoothing_nothing_is_proven():
    X, y, way = _episodes(tasks=1)
    res = solve_group_sparse_svm(X, y, way, lam_ratio=0.5, lam2=LAM2, tau=0.0, tol=1e-5)
    scr = screen_features(X, y, way, res.dual, res.lam1, LAM2, 0.0)
    assert scr.undetermined.all() and torch.isinf(scr.radius).all()


def test_features_zero_on_the_support_are_proven_unused_even_at_lambda_zero():
    X, y, way = _episodes(tasks=2)
    X[:, :, :5] = 0.0  # dead ReLU features
    res = solve_group_sparse_svm(X, y, way, lam_ratio=0.0, lam2=LAM2, tau=TAU, tol=1e-5)
    scr = screen_features(X, y, way, res.dual, res.lam1, LAM2, TAU)
    assert scr.proven_unused[:, :5].all() and not scr.proven_unused[:, 5:].any()
    assert not scr.undetermined[:, :5].any()
