"""Generic implicit differentiation (metasparse.solvers.implicit): group Lasso and ridge oracles."""

from __future__ import annotations

import pytest
import torch

from metasparse.solvers.root import custom_root, implicit_root


def _bst(V: torch.Tensor, thr: torch.Tensor | float) -> torch.Tensor:
    """Row-wise block soft-thresholding (rows = groups)."""
    nrm = V.norm(dim=-1, keepdim=True)
    return torch.clamp(1 - thr / nrm.clamp_min(1e-300), min=0) * V


def _group_lasso(X, Y, lam1, lam2, iters=3000):
    """Batched proximal gradient for min ½‖XW − Y‖² + lam1 Σ_j ‖W_j‖ + lam2/2 ‖W‖² (W: p×k)."""
    L = torch.linalg.matrix_norm(X, ord=2) ** 2 + lam2
    eta = (1 / L)[:, None, None]
    W = torch.zeros(X.shape[0], X.shape[2], Y.shape[2], dtype=X.dtype)
    for _ in range(iters):
        G = X.transpose(1, 2) @ (X @ W - Y) + lam2 * W
        W = _bst(W - eta * G, eta * lam1)
    return W, eta


def _problem(seed=0, T=2, n=12, p=6, k=2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, n, p, generator=g, dtype=torch.float64)
    Y = torch.randn(T, n, k, generator=g, dtype=torch.float64)
    return X, Y


def _fit(X, Y, lam1, lam2, solve="dense", use_active=True):
    with torch.no_grad():
        W, eta = _group_lasso(X, Y, lam1, lam2)

    def fixed_point(W_, X_, Y_):
        G = X_.transpose(1, 2) @ (X_ @ W_ - Y_) + lam2 * W_
        return W_ - _bst(W_ - eta * G, eta * lam1)

    active = (W.norm(dim=-1, keepdim=True) > 0).expand_as(W) if use_active else None
    return implicit_root(fixed_point, W, (X, Y), active=active, solve=solve)


@pytest.mark.parametrize("solve", ["dense", "gmres"])
def test_group_lasso_gradient_matches_finite_differences(solve):
    X, Y = _problem()
    lam1, lam2 = 3.0, 0.1
    X.requires_grad_(True)
    Y.requires_grad_(True)
    W = _fit(X, Y, lam1, lam2, solve=solve)
    assert (W.norm(dim=-1) == 0).any(), "test needs some inactive groups"
    assert (W.norm(dim=-1) > 0).any()
    C = torch.randn_like(W)
    gX, gY = torch.autograd.grad((W * C).sum(), (X, Y))
    eps = 1e-6
    for P, gP in ((X, gX), (Y, gY)):
        D = torch.randn_like(P)
        with torch.no_grad():
            P += eps * D
            fp = (_group_lasso(X, Y, lam1, lam2)[0] * C).sum()
            P -= 2 * eps * D
            fm = (_group_lasso(X, Y, lam1, lam2)[0] * C).sum()
            P += eps * D
        fd = (fp - fm) / (2 * eps)
        assert torch.allclose((gP * D).sum(), fd, rtol=1e-5, atol=1e-7)


def test_active_restriction_equals_full_system():
    X, Y = _problem(seed=1)
    X.requires_grad_(True)
    C = torch.randn(2, 6, 2, dtype=torch.float64)
    W1 = _fit(X, Y, 3.0, 0.1, use_active=True)
    (g1,) = torch.autograd.grad((W1 * C).sum(), X)
    W2 = _fit(X, Y, 3.0, 0.1, use_active=False)
    (g2,) = torch.autograd.grad((W2 * C).sum(), X)
    assert torch.allclose(g1, g2, rtol=1e-8, atol=1e-10)


def test_custom_root_ridge_with_cg_matches_closed_form():
    X, Y = _problem(seed=2)
    X.requires_grad_(True)
    lam2 = 0.5

    def grad_f(W, X_, Y_):  # symmetric Jacobian: the Hessian XᵀX + lam2 I
        return X_.transpose(1, 2) @ (X_ @ W - Y_) + lam2 * W

    @custom_root(grad_f, solve="cg")
    def ridge(X_, Y_):
        A = X_.transpose(1, 2) @ X_ + lam2 * torch.eye(X_.shape[2], dtype=X_.dtype)
        return torch.linalg.solve(A, X_.transpose(1, 2) @ Y_)

    W = ridge(X, Y)
    A = X.transpose(1, 2) @ X + lam2 * torch.eye(6, dtype=X.dtype)
    W_ref = torch.linalg.solve(A, X.transpose(1, 2) @ Y)
    C = torch.randn_like(W)
    (g,) = torch.autograd.grad((W * C).sum(), X)
    (g_ref,) = torch.autograd.grad((W_ref * C).sum(), X)
    assert torch.allclose(W, W_ref)
    assert torch.allclose(g, g_ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("solve", ["cg", "gmres"])
def test_iterative_solves_warn_when_out_of_steps(solve):
    # (XᵀX + λ2 I) u = g by CG / GMRES: certified quietly with the default budget, and with one
    # step a warning that names the residual reached (the gradient is then approximate)
    import warnings

    from metasparse.solvers.root import solve_transposed

    X, _ = _problem(seed=4, p=8)
    z = torch.randn(2, 8, 1, dtype=X.dtype, requires_grad=True)
    F = X.transpose(1, 2) @ (X @ z) + 0.3 * z
    g = torch.randn(2, 8, 1, dtype=X.dtype)
    A = X.transpose(1, 2) @ X + 0.3 * torch.eye(8, dtype=X.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u = solve_transposed(F, z, g, solve=solve)
    torch.testing.assert_close(A @ u, g, rtol=1e-8, atol=1e-8)
    with pytest.warns(RuntimeWarning, match=rf"{solve} stopped after 1 steps at relative resid"):
        solve_transposed(F, z, g, solve=solve, maxiter=1)


def test_pcg_matches_a_direct_solve_with_and_without_a_preconditioner():
    from metasparse.solvers.root import pcg

    g = torch.Generator().manual_seed(5)
    B = torch.randn(3, 10, 10, generator=g, dtype=torch.float64)
    A = B @ B.mT + 0.1 * torch.eye(10, dtype=torch.float64)
    b = torch.randn(3, 10, 2, generator=g, dtype=torch.float64)  # (T, n, K) vectors
    ref = torch.linalg.solve(A.unsqueeze(1), b.mT.unsqueeze(-1)).squeeze(-1).mT
    jacobi = A.diagonal(dim1=1, dim2=2).unsqueeze(-1)
    for precond in (None, lambda r: r / jacobi):
        x, res = pcg(lambda v: A @ v, b, 1e-10, 100, precond)
        assert res == 0.0
        torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-8)
    x, res = pcg(lambda v: A @ v, b, 1e-10, 2)
    assert res > 1e-10  # out of steps: the residual it reached comes back


def test_bad_arguments_raise():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="solve must be one of"):
        implicit_root(lambda z_: z_, z, (), solve="lu")
    with pytest.raises(ValueError, match="active mask"):
        implicit_root(lambda z_: z_, z, (), active=torch.ones(3, dtype=torch.bool))


def test_dense_solve_is_safe_after_raising_the_thread_count():
    # batched CPU LU returns invalid pivots after torch.set_num_threads(2) (a PyTorch bug,
    # reproduced here at 8 × 200 × 200 in float32); the dense implicit solve factorises one task
    # at a time instead (conftest restores one thread afterwards)
    from metasparse.solvers.root import _solve_per_task

    g = torch.Generator().manual_seed(3)
    m = 200
    A = torch.randn(8, m, m, generator=g, dtype=torch.float64) + m**0.5 * torch.eye(m)
    b = torch.randn(8, m, generator=g, dtype=torch.float64)
    torch.set_num_threads(2)
    for dtype, tol in ((torch.float32, 1e-3), (torch.float64, 1e-10)):
        x = _solve_per_task(A.to(dtype), b.to(dtype))
        resid = (A.to(dtype) @ x.unsqueeze(-1)).squeeze(-1) - b.to(dtype)
        assert float(resid.abs().max()) < tol, dtype
    # the generic implicit root through it: a ridge with 8 tasks × 200 coordinates
    X = torch.randn(8, 30, m, generator=g, dtype=torch.float64, requires_grad=True)
    Y = torch.randn(8, 30, 1, generator=g, dtype=torch.float64)
    lam = 0.5
    with torch.no_grad():
        H = X.transpose(1, 2) @ X + lam * torch.eye(m, dtype=X.dtype)
        W = torch.cholesky_solve(X.transpose(1, 2) @ Y, torch.linalg.cholesky(H))

    def grad_f(W_, X_):
        return X_.transpose(1, 2) @ (X_ @ W_ - Y) + lam * W_

    Wa = implicit_root(grad_f, W, (X,), solve="dense")
    (gX,) = torch.autograd.grad(Wa.sum(), X)
    torch.set_num_threads(1)  # the reference below uses batched LU itself
    Wd = torch.linalg.solve(
        X.transpose(1, 2) @ X + lam * torch.eye(m, dtype=X.dtype), X.transpose(1, 2) @ Y
    )
    (ref,) = torch.autograd.grad(Wd.sum(), X)
    torch.testing.assert_close(gX, ref, rtol=1e-7, atol=1e-9)
