"""The batched group-Lasso inner solver: sklearn oracle, λ_max, implicit gradients (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso, MultiTaskLasso

from metasparse.solvers.group_lasso import (
    GroupLassoSolver,
    group_lasso_lambda_max,
    group_lasso_objective,
    solve_group_lasso,
)


def _problem(t: int = 3, n: int = 15, p: int = 6, k: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(t, n, p, generator=g, dtype=torch.float64)
    W = torch.randn(t, p, k, generator=g, dtype=torch.float64) * (
        torch.rand(t, p, 1, generator=g) < 0.5
    )
    Y = X @ W + 0.3 * torch.randn(t, n, k, generator=g, dtype=torch.float64)
    return X, (Y[..., 0] if k == 1 else Y)


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.8])
def test_lasso_matches_sklearn(ratio: float) -> None:
    X, y = _problem()
    res = GroupLassoSolver(lam_ratio=ratio, tol=1e-12).run(X, y)
    assert res.converged and res.W.shape == (3, 6)
    for t in range(3):
        ref = Lasso(alpha=float(res.lam[t]), fit_intercept=False, tol=1e-14, max_iter=100000)
        ref.fit(X[t].numpy(), y[t].numpy())
        np.testing.assert_allclose(res.W[t].numpy(), ref.coef_, atol=1e-7)


def test_group_lasso_matches_multitask_lasso() -> None:
    X, Y = _problem(k=3, seed=1)
    res = GroupLassoSolver(lam_ratio=0.3, tol=1e-12).run(X, Y)
    assert res.W.shape == (3, 6, 3)
    assert (~res.active).any(), "the test should exercise some dropped features"
    for t in range(3):
        ref = MultiTaskLasso(
            alpha=float(res.lam[t]), fit_intercept=False, tol=1e-14, max_iter=10**5
        )
        ref.fit(X[t].numpy(), Y[t].numpy())
        np.testing.assert_allclose(res.W[t].numpy(), ref.coef_.T, atol=1e-7)


def test_lambda_max_is_the_smallest_lambda_with_zero_solution() -> None:
    X, Y = _problem(k=2, seed=2)
    lam_max = group_lasso_lambda_max(X, Y)
    expected = (X.transpose(1, 2) @ Y).norm(dim=2).amax(1) / X.shape[1]
    torch.testing.assert_close(lam_max, expected)
    at_max = GroupLassoSolver(lam_ratio=1.0, tol=1e-12).run(X, Y)
    assert (at_max.W == 0).all()
    below = GroupLassoSolver(lam_ratio=0.95, tol=1e-12).run(X, Y)
    assert (below.active.sum(1) >= 1).all()  # every task uses a feature just below λ_max


def test_solution_beats_perturbations_of_the_objective() -> None:
    X, Y = _problem(k=2, seed=3)
    res = GroupLassoSolver(lam_ratio=0.2, tol=1e-12).run(X, Y)
    f0 = group_lasso_objective(res.W, X, Y, res.lam)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        W = res.W + 1e-3 * torch.randn(res.W.shape, generator=g, dtype=torch.float64)
        assert (group_lasso_objective(W, X, Y, res.lam) >= f0 - 1e-12).all()
    assert (res.gap <= 1e-12).all()


@pytest.mark.parametrize("k", [1, 2])
def test_implicit_gradient_matches_finite_differences_float64(k: int) -> None:
    X, Y = _problem(t=2, n=12, p=4, k=k, seed=4)
    X.requires_grad_(True)
    Y.requires_grad_(True)
    solver = GroupLassoSolver(lam_ratio=0.25, tol=1e-15, max_iter=50000, check_every=5)
    W = solver.run(X, Y).W
    assert W.requires_grad and (W.detach() == 0).any() and (W.detach() != 0).any()
    assert torch.autograd.gradcheck(lambda a, b: solver.run(a, b).W, (X, Y), eps=1e-6, atol=1e-5)


def test_implicit_gradient_of_a_query_loss_matches_central_differences() -> None:
    X, y = _problem(t=2, n=12, p=5, seed=5)
    Xq = torch.randn(2, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    solver = GroupLassoSolver(lam_ratio=0.1, tol=1e-15, max_iter=50000, check_every=5)

    def loss(x: torch.Tensor) -> torch.Tensor:
        w = solver.run(x, y).W
        return ((Xq @ w.unsqueeze(-1)) ** 2).sum()

    Xg = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(Xg), Xg)
    direction = torch.randn_like(X, generator=torch.Generator().manual_seed(2))
    eps = 1e-6
    fd = (loss(X + eps * direction) - loss(X - eps * direction)) / (2 * eps)
    assert float((grad * direction).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_no_graph_without_requires_grad_and_float32_roundtrip() -> None:
    X, y = _problem(seed=6)
    W = solve_group_lasso(X.float(), y.float(), lam_ratio=0.2)
    assert W.dtype == torch.float32 and not W.requires_grad


@pytest.mark.parametrize(
    ("X", "Y", "match"),
    [
        (torch.zeros(3, 4), torch.zeros(3, 4), "tasks, samples, features"),
        (torch.zeros(2, 4, 3), torch.zeros(2, 5), "matching X"),
        (torch.full((2, 4, 3), float("nan")), torch.zeros(2, 4), "finite"),
    ],
)
def test_bad_input_raises(X: torch.Tensor, Y: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GroupLassoSolver().run(X, Y)


def test_bad_ratio_raises() -> None:
    with pytest.raises(ValueError, match="lam_ratio"):
        GroupLassoSolver(lam_ratio=0.0)
