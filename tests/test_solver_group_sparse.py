"""Group-sparse SVM solver: reference objective (cvxpy), λ_max, gradients, degenerate episodes."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

import metasparse.solvers.svm.backward as svm_backward
from metasparse.solvers import (
    GroupSparseSVMSolver,
    lambda_max,
    objectives,
    products,
    solve_group_sparse_svm,
    tuning,
)
from metasparse.solvers.linalg import padded_index
from metasparse.solvers.rows import Rows
from metasparse.solvers.svm import fista, problem
from metasparse.solvers.svm.face import gram_from_forward, weighted_gram
from metasparse.solvers.svm.metric import Metric
from metasparse.solvers.svm.problem import (
    column_norms,
    dual_gradient,
    dual_hessian,
    lambda_max_unchecked,
    onehot,
    project_simplex,
)
from metasparse.solvers.svm.steps import ridge_warm_start

cp = pytest.importorskip("cvxpy")


def _episode(seed=0, T=2, n=9, p=7, K=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, n, p, generator=g, dtype=dtype)
    labels = torch.stack([torch.randperm(n, generator=g) % K for _ in range(T)])
    return X, labels


def _cvxpy_primal(X, labels, K, lam1, lam2, tau):
    """Independent reference: the primal of docs/method.md §2 solved by cvxpy (Clarabel)."""
    n, p = X.shape
    Y = np.eye(K)[labels]
    W = cp.Variable((K, p))
    S = X @ W.T
    C = S + 1 - Y
    sy = cp.sum(cp.multiply(S, Y), axis=1)
    if tau > 0:
        # ℓ_τ = min_z [max_k z_k + ‖c + τ e_y − z‖²/(2τ)] − s_y − τ/2  (Moreau envelope of max)
        Z = cp.Variable((n, K))
        loss = (
            cp.sum(cp.max(Z, axis=1))
            + cp.sum_squares(C + tau * Y - Z) / (2 * tau)
            - cp.sum(sy)
            - n * tau / 2
        )
    else:
        loss = cp.sum(cp.max(C, axis=1) - sy)
    obj = loss + lam1 * cp.sum(cp.norm(W, 2, axis=0)) + lam2 / 2 * cp.sum_squares(W)
    prob = cp.Problem(cp.Minimize(obj))
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return prob.value


@pytest.mark.parametrize("tau", [0.0, 0.05, 0.5])
@pytest.mark.parametrize("lam_ratio", [0.05, 0.3, 0.8])
def test_objective_matches_cvxpy(lam_ratio, tau):
    X, labels = _episode(seed=int(lam_ratio * 100) + int(tau * 10))
    lam2 = 0.5
    res = solve_group_sparse_svm(
        X, labels, 3, lam_ratio=lam_ratio, lam2=lam2, tau=tau, tol=1e-9, max_iter=50000
    )
    assert bool(res.converged.all())
    for t in range(X.shape[0]):
        ref = _cvxpy_primal(X[t].numpy(), labels[t].numpy(), 3, float(res.lam1[t]), lam2, tau)
        assert abs(float(res.primal[t]) - ref) <= 1e-6 * max(1.0, abs(ref))
        assert abs(float(res.dual_value[t]) - ref) <= 1e-6 * max(1.0, abs(ref))
    # the reported primal is the objective of the returned weights
    P, _, _ = objectives(
        res.dual.detach(), X, torch.eye(3, dtype=X.dtype)[labels], res.lam1, lam2, tau
    )
    assert torch.allclose(P, res.primal, rtol=1e-10)


@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_lambda_max_exact_for_positive_tau(tau):
    X, labels = _episode(seed=3)
    at_max = solve_group_sparse_svm(X, labels, 3, lam_ratio=1.0, lam2=0.5, tau=tau, tol=1e-9)
    assert torch.equal(at_max.weights, torch.zeros_like(at_max.weights))
    assert bool(at_max.converged.all())
    below = solve_group_sparse_svm(X, labels, 3, lam_ratio=0.99, lam2=0.5, tau=tau, tol=1e-9)
    assert bool((below.weights.detach().abs().amax((1, 2)) > 0).all())


def test_lambda_max_is_an_upper_bound_at_tau_zero():
    """τ = 0: the uniform-α⁰ value is an upper bound; the exact value is a min–max (cvxpy)."""
    X, labels = _episode(seed=4, T=1)
    lmax = float(lambda_max(X, labels, 3, tau=0.0)[0])
    Xn, y = X[0].numpy(), labels[0].numpy()
    Y = np.eye(3)[y]
    A = cp.Variable((X.shape[1], 3))
    alpha = cp.Variable((X.shape[1], 3), nonneg=True)
    exact = cp.Problem(
        cp.Minimize(cp.max(cp.norm(Xn.T @ (Y - alpha), 2, axis=1))),
        [cp.sum(alpha, axis=1) == 1, cp.multiply(alpha, Y) == 0],
    )
    del A
    exact.solve(solver=cp.CLARABEL)
    assert exact.value <= lmax * (1 + 1e-9)
    res = solve_group_sparse_svm(X, labels, 3, lam_ratio=1.0, lam2=0.5, tau=0.0, tol=1e-9)
    assert torch.equal(res.weights, torch.zeros_like(res.weights))
    # W = 0 stays optimal down to the exact value (checked just above it)
    ratio = exact.value / lmax
    if ratio < 0.999:
        just_above = solve_group_sparse_svm(
            X, labels, 3, lam_ratio=ratio * 1.001, lam2=0.5, tau=0.0, tol=1e-9, max_iter=50000
        )
        assert float(just_above.weights.detach().abs().max()) < 1e-6


def test_features_used_decreases_with_lam_ratio():
    X, labels = _episode(seed=5, T=3, n=12, p=30)
    used = [
        float(
            solve_group_sparse_svm(
                X, labels, 3, lam_ratio=r, lam2=0.5, tau=0.1
            ).features_used.mean()
        )
        for r in (0.01, 0.2, 0.5, 0.8, 1.0)
    ]
    assert all(a >= b for a, b in itertools.pairwise(used))
    assert used[0] > used[-2] and used[-1] == 0.0


@pytest.mark.parametrize("backward", ["dense", "cg", "direct", "generic"])
def test_gradient_matches_finite_differences(backward, monkeypatch):
    X, labels = _episode(seed=6, T=2, n=8, p=6)
    lam1 = torch.tensor([0.4, 0.6], dtype=torch.float64)
    # no ridge start: its grid search may pick different points at X ± εD (see below)
    kw = dict(lam1=lam1, lam2=0.5, tau=0.3, tol=1e-14, max_iter=100000, ridge_start=0)
    Xg = X.clone().requires_grad_(True)
    ran = []
    if backward == "direct":  # the CG backward's direct solve on the face, forced
        direct = svm_backward.direct_face_solve
        monkeypatch.setattr(tuning, "DIRECT_ACTIVE", 1.0)
        spy = lambda *a: ran.append(1) or direct(*a)  # noqa: E731
        monkeypatch.setattr(svm_backward, "direct_face_solve", spy)
    res = solve_group_sparse_svm(Xg, labels, 3, backward=backward.replace("direct", "cg"), **kw)
    C = torch.randn_like(res.weights)
    (g,) = torch.autograd.grad((res.weights * C).sum(), Xg)
    D = torch.randn_like(X)
    eps = 1e-5
    # cold starts on both sides: a warm start stops at gap ≤ tol with an α error ~ √(gap/τ),
    # comparable to eps; the same iteration path on both sides cancels it
    with torch.no_grad():
        fp = (solve_group_sparse_svm(X + eps * D, labels, 3, **kw).weights * C).sum()
        fm = (solve_group_sparse_svm(X - eps * D, labels, 3, **kw).weights * C).sum()
    fd = float((fp - fm) / (2 * eps))
    assert abs(float((g * D).sum()) - fd) <= 1e-5 * max(1.0, abs(fd))
    assert bool(ran) == (backward == "direct")


def test_auto_backward_is_dense_only_on_few_dual_coordinates():
    # the dense system grows as (n·K)³ whatever p is: 18-way 13-shot at p = 4 (n·K·p < 2e4)
    # took 5.3 s dense against 0.21 s by CG (benchmarks/results/small_backward.json)
    assert not svm_backward.use_cg_backward("auto", 0.1, 25, 5, 64)  # 5-way 5-shot, tiny
    assert svm_backward.use_cg_backward("auto", 0.1, 234, 18, 4)
    assert svm_backward.use_cg_backward("auto", 0.1, 10, 5, 5000)  # many features
    assert not svm_backward.use_cg_backward("auto", 0.0, 234, 18, 4)  # τ = 0: dense always


@pytest.mark.parametrize("backward", ["dense", "cg"])
def test_no_active_feature_gives_a_zero_gradient_like_the_generic_path(backward):
    # at λ1 ≥ λ_max no feature is active: W = 0 near X, so both closed-form paths return
    # zeros without forming a system, as the generic fixed-point derivative does
    X, labels = _episode(seed=3, T=2, n=9, p=6)
    grads = []
    for mode in (backward, "generic"):
        Xg = X.clone().requires_grad_(True)
        res = solve_group_sparse_svm(Xg, labels, 3, lam_ratio=1.0, tol=1e-12, backward=mode)
        assert float(res.features_used.max()) == 0.0
        loss = (
            res.weights.sum()
            + (res.dual * torch.linspace(0, 1, res.dual.numel()).view_as(res.dual)).sum()
        )
        (g,) = torch.autograd.grad(loss, Xg)
        grads.append(g)
    assert torch.count_nonzero(grads[0]) == 0
    assert torch.allclose(grads[0], grads[1], atol=1e-12)


@pytest.mark.parametrize("lam_ratio", [0.1, 0.4, 0.7])
def test_backward_solvers_agree_on_sparse_solution(lam_ratio):
    # 0.1: nearly all features active (the CG backward works on all of X); 0.7: at most 60%
    # active in every task (it gathers the active features and scatters the gradient back)
    X, labels = _episode(seed=7, T=3, n=10, p=25)
    grads = []
    for backward in ("dense", "cg", "generic"):
        Xg = X.clone().requires_grad_(True)
        res = solve_group_sparse_svm(
            Xg,
            labels,
            3,
            lam_ratio=lam_ratio,
            lam2=0.5,
            tau=0.05,
            tol=1e-12,
            backward=backward,
            max_iter=100000,
        )
        assert 0 < float(res.features_used.mean()) < 1
        if lam_ratio == 0.7:
            assert float(res.features_used.max()) <= 0.6
        (g,) = torch.autograd.grad(res.weights.square().sum(), Xg)
        grads.append(g)
    assert torch.allclose(grads[0], grads[2], rtol=1e-7, atol=1e-9)
    assert torch.allclose(grads[1], grads[2], rtol=1e-6, atol=1e-8)


def test_float32_matches_float64():
    X, labels = _episode(seed=8)
    r64 = solve_group_sparse_svm(X, labels, 3, lam_ratio=0.1, lam2=1.0, tau=0.2, tol=1e-5)
    X32 = X.float().requires_grad_(True)
    r32 = solve_group_sparse_svm(X32, labels, 3, lam_ratio=0.1, lam2=1.0, tau=0.2, tol=1e-5)
    assert r32.weights.dtype == torch.float32 and bool(r32.converged.all())
    assert torch.allclose(
        r32.weights.double(), r64.weights, atol=2e-3 * float(r64.weights.abs().max())
    )
    r32.weights.sum().backward()
    assert X32.grad is not None and bool(torch.isfinite(X32.grad).all())


def _weight_distance_bound(r1, r2, lam2):
    """‖W1 − W2‖_F allowed by the certificates: P is λ2-strongly convex, so
    ‖W − W*‖² ≤ 2 (P(W) − P*)/λ2 ≤ 2·gap·max(1, |P|)/λ2 for each solution."""
    b1 = (2 * r1.gap * r1.primal.abs().clamp_min(1) / lam2).sqrt()
    b2 = (2 * r2.gap * r2.primal.abs().clamp_min(1) / lam2).sqrt()
    return b1 + b2 + 1e-12


def test_warm_start_and_all_methods_agree():
    X, labels = _episode(seed=9, T=2, n=12, p=20)
    kw = dict(lam_ratio=0.1, lam2=0.5, tau=0.1, tol=1e-9)
    cold = solve_group_sparse_svm(X, labels, 3, **kw)
    warm = solve_group_sparse_svm(X, labels, 3, init=cold.dual.detach(), **kw)
    assert bool(warm.converged.all()) and int(warm.iterations.max()) < int(cold.iterations.max())
    for method, rank in (("pgd", 0), ("fista", 0), ("vmfista", 1), ("vmfista", 30)):
        other = solve_group_sparse_svm(X, labels, 3, method=method, rank=rank, max_iter=50000, **kw)
        assert bool(other.converged.all()), (method, rank)
        dist = (other.weights - cold.weights).flatten(1).norm(dim=-1)
        assert bool((dist <= _weight_distance_bound(other, cold, 0.5)).all()), (method, rank)


def test_working_set_gives_the_full_problem_solution(monkeypatch):
    # sparse solutions: the iterations run on a subset of features, violators are added back
    # and the certificate is the full problem's
    calls = []
    orig = GroupSparseSVMSolver._run

    def spy(self, rows, *args, **kwargs):
        calls.append(rows.X.shape[2])
        return orig(self, rows, *args, **kwargs)

    monkeypatch.setattr(GroupSparseSVMSolver, "_run", spy)
    g = torch.Generator().manual_seed(11)
    X = torch.relu(torch.randn(4, 30, 400, generator=g, dtype=torch.float64))
    labels = torch.arange(5).repeat_interleave(6).expand(4, -1)
    kw = dict(lam_ratio=0.6, lam2=10.0, tau=0.1, tol=1e-9)
    ws = solve_group_sparse_svm(X, labels, 5, working_set=True, **kw)
    assert calls and calls[0] < 400, "the working set was not used"
    full = solve_group_sparse_svm(X, labels, 5, working_set=False, **kw)
    assert bool(ws.converged.all()) and bool(full.converged.all())
    Y = torch.eye(5, dtype=X.dtype)[labels]
    _, _, gap = objectives(ws.dual.detach(), X, Y, ws.lam1, 10.0, 0.1)  # on all features
    assert torch.allclose(gap, ws.gap, rtol=1e-6, atol=1e-12)
    dist = (ws.weights - full.weights).flatten(1).norm(dim=-1)
    assert bool((dist <= _weight_distance_bound(ws, full, 10.0)).all())


def _degenerate_cases():
    X, labels = _episode(seed=10, T=1, n=9, p=12)
    zero = torch.zeros_like(X)
    dup = X.clone()
    dup[:, 1] = dup[:, 0]
    labels_dup = labels.clone()
    labels_dup[:, 1] = labels_dup[:, 0]
    rank_def = torch.randn(1, 9, 2, dtype=torch.float64) @ torch.randn(
        1, 2, 12, dtype=torch.float64
    )
    once = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 1, 2]])
    return {
        "zeros": (zero, labels),
        "duplicates": (dup, labels_dup),
        "tiny_scale": (X * 1e-6, labels),
        "huge_scale": (X * 1e6, labels),
        "rank_deficient": (rank_def, labels),
        "class_once": (X, once),
    }


@pytest.mark.parametrize("case", list(_degenerate_cases()))
def test_degenerate_episodes_are_finite_and_certified(case):
    X, labels = _degenerate_cases()[case]
    Xg = X.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve_group_sparse_svm(Xg, labels, 3, lam_ratio=0.1, max_iter=500)
    assert bool(torch.isfinite(res.weights).all()) and bool(torch.isfinite(res.gap).all())
    # an uncertified episode is announced, with the cause and the fix
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not said, said
    # certified, by the certificate recomputed from the returned dual point
    Y = torch.eye(3, dtype=X.dtype)[labels]
    _, _, gap = objectives(res.dual.detach(), X, Y, res.lam1, 1000.0, 1e-3)
    assert bool(res.converged.all()) and bool((gap <= 1e-5).all()), f"{case}: gap {gap.tolist()}"
    res.weights.sum().backward()
    assert bool(torch.isfinite(Xg.grad).all())


def test_bad_inputs_raise():
    X, labels = _episode()
    bad = X.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        solve_group_sparse_svm(bad, labels, 3, lam_ratio=0.1)
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        lambda_max(bad, labels, 3)
    with pytest.raises(ValueError, match="exactly one of"):
        solve_group_sparse_svm(X, labels, 3)
    with pytest.raises(ValueError, match="exactly one of"):
        solve_group_sparse_svm(X, labels, 3, lam_ratio=0.1, lam1=1.0)
    with pytest.raises(ValueError, match="lam1 must be"):
        solve_group_sparse_svm(X, labels, 3, lam1=torch.ones(5))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        solve_group_sparse_svm(X, labels + 3, 3, lam_ratio=0.1)
    with pytest.raises(ValueError, match="lam2"):
        GroupSparseSVMSolver(lam2=0.0)
    with pytest.raises(ValueError, match="method"):
        GroupSparseSVMSolver(method="newton")
    with pytest.raises(ValueError, match="polish_after"):
        GroupSparseSVMSolver(polish_after=-1)
    with pytest.raises(ValueError, match="polish_steps"):
        GroupSparseSVMSolver(polish_steps=0)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("tau", [0.0, 0.01])
def test_metric_prox_solves_its_quadratic_program(tau, scaled):
    """The variable-metric prox (semismooth Newton on the dualised low-rank part) returns the
    minimiser of ⟨g, α⟩ + ½‖α − y‖²_{sQ} over the simplices (``s`` per task, or 1): checked
    against many projected gradient steps on the same strongly convex problem."""
    g = torch.Generator().manual_seed(12)
    X = torch.relu(torch.randn(3, 12, 40, generator=g, dtype=torch.float64)) + 0.5
    metric = Metric.from_features(X, lam2=2.0, tau=tau, rank=3)
    assert metric.V.shape[-1] == 3 and bool((metric.lam > 0).all())
    y = project_simplex(torch.randn(3, 12, 4, generator=g, dtype=torch.float64))
    grad = 3 * torch.randn(3, 12, 4, generator=g, dtype=torch.float64)
    s = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64).reshape(3, 1, 1)
    a, _ = metric.prox(y, grad, torch.zeros(3, 3, 4, dtype=torch.float64), s if scaled else None)
    s = s if scaled else torch.ones_like(s)
    ref = y.clone()
    step = 1.0 / (s * (metric.c + metric.lam.amax(-1).reshape(-1, 1, 1)))
    for _ in range(4000):  # PGD on the same problem, step 1/‖sQ‖
        ref = project_simplex(ref - step * (grad + s * metric.apply(ref - y)))

    def value(z):
        return (grad * z).sum((1, 2)) + 0.5 * ((z - y) * s * metric.apply(z - y)).sum((1, 2))

    assert torch.allclose(a.sum(-1), torch.ones(3, 12, dtype=torch.float64))
    assert bool((a >= 0).all())
    assert bool((value(a) <= value(ref) + 1e-10).all())
    assert torch.allclose(a, ref, atol=1e-6)


def test_task_subsets_by_views_match_copies():
    # the solver's compaction works on per-task views of X instead of copying X[keep]
    g = torch.Generator().manual_seed(21)
    X = torch.randn(5, 6, 40, generator=g, dtype=torch.float64)
    rows = Rows(X).subset(torch.tensor([True, False, True, True, False]))
    rows = rows.subset(torch.tensor([False, True, True]))  # tasks 2 and 3 of the original
    assert rows.ids == [2, 3]
    Xs = X[[2, 3]]
    A = torch.randn(2, 4, 6, dtype=torch.float64)
    W = torch.randn(2, 4, 40, dtype=torch.float64)
    torch.testing.assert_close(rows.left(A), A @ Xs)
    torch.testing.assert_close(rows.right(W), Xs @ W.transpose(1, 2))
    torch.testing.assert_close(rows.gram(), Xs @ Xs.transpose(1, 2))
    idx, valid = padded_index(torch.rand(2, 40, generator=g) < 0.3)
    ref = Xs.gather(2, idx.unsqueeze(1).expand(-1, 6, -1)) * valid.unsqueeze(1)
    torch.testing.assert_close(rows.gather_features(idx, valid), ref)
    assert Rows(X).subset(torch.ones(5, dtype=torch.bool)).ids is None  # all tasks: no loop


@pytest.mark.parametrize("masked", [False, True])
def test_preconditioner_gram_from_the_forward_matches_the_direct_one(masked):
    # the backward's weighted Gram rebuilt from the forward's X_S X_Sᵀ by a gathered update
    g = torch.Generator().manual_seed(22)
    X = torch.randn(3, 7, 60, generator=g, dtype=torch.float64)
    c = torch.rand(3, 60, generator=g, dtype=torch.float64)
    act = torch.rand(3, 60, generator=g) < 0.7
    mask = (act | (torch.rand(3, 60, generator=g) < 0.5)) if masked else None
    if masked:
        mask[:, 0] = False  # an active feature outside the forward's set enters the update
        act[:, 0] = True
    Xm = X if mask is None else X * mask.unsqueeze(1)
    G = Xm @ Xm.transpose(1, 2)
    omega = torch.where(act, torch.where(c < 0.8, 1.0, c), 0.0)  # any weights will do
    direct = weighted_gram(X, omega)
    upd = gram_from_forward(X, omega, (G, mask), limit=60)
    torch.testing.assert_close(upd, direct, rtol=1e-12, atol=1e-10)
    assert gram_from_forward(X, omega, (G, mask), limit=1) is None  # too many: not cheaper


@pytest.mark.parametrize("lam_ratio, updated", [(0.01, True), (0.6, False)])
def test_solver_hands_its_m_and_gram_to_the_backward(lam_ratio, updated, monkeypatch):
    # run() returns (Y − α)ᵀX at the certified point and the Gram of the features it
    # iterated on; the fused backward gives the same gradient with or without them (the
    # preconditioner's Gram is the forward's plus a small update, or with many differing
    # weights the forward's as it is; 0.6: the working set's Gram, 7 of 90 features differ)
    updates = []
    orig = svm_backward.gram_from_forward

    def spy(*args):
        out = orig(*args)
        updates.append(out is not None)
        return out

    monkeypatch.setattr(svm_backward, "gram_from_forward", spy)
    monkeypatch.setattr(tuning, "DIRECT_FACE", 0)  # the CG path (0.6 would take the direct one)
    from metasparse.solvers import svm_weights

    g = torch.Generator().manual_seed(23)
    X = torch.relu(torch.randn(3, 12, 300, generator=g, dtype=torch.float64))
    labels = torch.arange(4).repeat_interleave(3).expand(3, -1)
    Y = onehot(labels, 4, X.dtype)
    lam1 = lam_ratio * lambda_max(X, labels, 4, tau=0.1)
    out = GroupSparseSVMSolver(lam2=10.0, tau=0.1, tol=1e-10).run(X, Y, lam1)
    torch.testing.assert_close(out.Mt, (Y - out.alpha).transpose(1, 2) @ X)
    S = X if out.gram_mask is None else X * out.gram_mask.unsqueeze(1)
    torch.testing.assert_close(out.gram, S @ S.transpose(1, 2))
    if lam_ratio > 0.5:
        assert out.gram_mask is not None and bool((~out.gram_mask).any())  # working set
    C = torch.randn(3, 4, 300, generator=g, dtype=torch.float64)
    grads = []
    for extra in ({}, {"Mt": out.Mt, "gram": (out.gram, out.gram_mask)}):
        Xg = X.clone().requires_grad_(True)
        W = svm_weights(out.alpha, Xg, Y, lam1, 10.0, 0.1, **extra)
        (gX,) = torch.autograd.grad((W * C).sum(), Xg)
        grads.append(gX)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)
    assert updates == [updated]


@pytest.mark.parametrize("max_iter", [2, 4, 7, 12])
def test_working_set_out_of_budget_reports_the_full_problems_gap(max_iter):
    # stopped mid-round (with or without violators outside the set), the reported gap is the
    # certificate of the returned point on all features
    g = torch.Generator().manual_seed(24)
    X = torch.relu(torch.randn(4, 30, 400, generator=g, dtype=torch.float64))
    labels = torch.arange(5).repeat_interleave(6).expand(4, -1)
    with pytest.warns(RuntimeWarning, match="not certified"):
        res = solve_group_sparse_svm(
            X, labels, 5, lam_ratio=0.6, lam2=10.0, tau=0.1, tol=1e-12, max_iter=max_iter
        )
    assert int(res.iterations.max()) <= max_iter
    Y = torch.eye(5, dtype=X.dtype)[labels]
    P, D, gap = objectives(res.dual.detach(), X, Y, res.lam1, 10.0, 0.1)
    torch.testing.assert_close(res.gap, gap, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(res.primal, P, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.dual_value, D, rtol=1e-9, atol=1e-9)


def test_cg_backward_says_when_it_stops_short():
    X, labels = _episode(seed=25, T=2, n=12, p=40)
    Y = onehot(labels, 3, X.dtype)
    res = solve_group_sparse_svm(X, labels, 3, lam_ratio=0.2, lam2=0.5, tau=0.05, tol=1e-12)
    alpha = res.dual.detach()
    ga = torch.randn_like(alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: silent
        full = svm_backward.svm_backward_cg(alpha, X, Y, res.lam1, 0.5, 0.05, ga)
    with pytest.warns(RuntimeWarning, match="CG stopped after 1 steps"):
        short = svm_backward.svm_backward_cg(alpha, X, Y, res.lam1, 0.5, 0.05, ga, maxiter=1)
    assert not torch.allclose(full, short)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_direct_face_solve_matches_cg(monkeypatch, dtype, rtol):
    # sparse solutions with small faces take one dense solve instead of CG: same gradient
    X, labels = _episode(seed=27, T=3, n=10, p=600, K=5, dtype=dtype)
    X = torch.relu(X)
    calls = []
    direct = svm_backward.direct_face_solve

    def counted(*args):
        calls.append(1)
        return direct(*args)

    monkeypatch.setattr(svm_backward, "direct_face_solve", counted)
    tol = 1e-10 if dtype == torch.float64 else 1e-6

    def grad(limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setattr(tuning, "DIRECT_FACE", limit)
        S = X.clone().requires_grad_(True)
        res = solve_group_sparse_svm(S, labels, 5, lam_ratio=0.6, lam2=10.0, tau=0.1, tol=tol)
        torch.manual_seed(0)
        (res.weights * torch.randn_like(res.weights)).sum().backward()
        return S.grad, res.features_used

    g_cg, used = grad(0)
    assert calls == [] and float(used.max()) <= tuning.DIRECT_ACTIVE  # sparse: eligible
    g_direct, _ = grad(10**6)
    assert calls == [1]
    torch.testing.assert_close(g_direct, g_cg, rtol=rtol, atol=rtol * float(g_cg.abs().max()))


def _badly_conditioned():
    # one well-scaled episode and three scaled by 1e2 / 1e4 / 1e6: κ = ‖X‖²/(λ2 τ) up to ~1e16
    g = torch.Generator().manual_seed(3)
    T, n, p, K = 4, 20, 50, 4
    X = torch.relu(torch.randn(T, n, p, generator=g, dtype=torch.float64))
    X = X * torch.tensor([1.0, 1e2, 1e4, 1e6], dtype=torch.float64).reshape(T, 1, 1)
    labels = torch.arange(K).repeat_interleave(n // K).expand(T, -1)
    return X, labels, torch.eye(K, dtype=X.dtype)[labels]


@pytest.mark.parametrize(
    "lam_ratio,working_set,tau",
    [(0.05, True, 1e-3), (0.5, False, 1e-3), (0.5, True, 1e-3), (0.5, False, 0.0)],
)
def test_newton_polish_certifies_badly_conditioned_episodes(lam_ratio, working_set, tau):
    X, labels, Y = _badly_conditioned()
    lam1 = lam_ratio * lambda_max(X, labels, 4, tau=tau)
    solver = GroupSparseSVMSolver(tau=tau, max_iter=600, working_set=working_set)
    out = solver.run(X, Y, lam1)
    assert int(out.iterations.max()) <= 600  # Newton steps count against max_iter
    _, _, gap = objectives(out.alpha, X, Y, lam1, 1000.0, tau)
    assert bool((gap <= 1e-5).all()), gap.tolist()
    # the solver's own certificate agrees up to round-off (M ~ 1e6·X at this conditioning)
    torch.testing.assert_close(out.gap, gap, rtol=1e-6, atol=1e-6)


def test_without_the_polish_badly_conditioned_episodes_stall():
    # the same budget without Newton steps: FISTA cannot certify κ ~ 1e12-1e16
    X, labels, Y = _badly_conditioned()
    lam1 = 0.5 * lambda_max(X, labels, 4, tau=1e-3)
    kw = {"tau": 1e-3, "max_iter": 300, "working_set": False}
    off = GroupSparseSVMSolver(polish_after=0, **kw).run(X, Y, lam1)
    on = GroupSparseSVMSolver(**kw).run(X, Y, lam1)
    assert bool((off.gap[2:] > 1e-2).all()), off.gap.tolist()
    assert bool((on.gap <= 1e-5).all()), on.gap.tolist()
    assert int(on.iterations[0]) == int(off.iterations[0]) < 100  # the easy one: no polish


def _hessian_point(seed: int):
    """A small 3-way episode, λ1 = 0.3 λ_max, and a random dual point with its (Y − α)ᵀX."""
    X, labels = _episode(seed=seed, T=2, n=6, p=10, K=3)
    Y = torch.eye(3, dtype=X.dtype)[labels]
    lam1 = 0.3 * lambda_max_unchecked(X, Y, 0.1)
    g = torch.Generator().manual_seed(seed)
    a = project_simplex(3 * torch.rand(2, 6, 3, generator=g, dtype=X.dtype))
    return X, Y, lam1, a, (Y - a).transpose(1, 2) @ X


def test_dual_hessian_matches_autograd():
    X, Y, lam1, a, Mt = _hessian_point(31)
    H = dual_hessian(Rows(X), Mt, column_norms(Mt), lam1, 10.0, 0.1, chunk=3)
    J = torch.autograd.functional.jacobian(lambda z: dual_gradient(z, X, Y, lam1, 10.0, 0.1), a)
    ref = torch.stack([J[t, :, :, t].reshape(18, 18) for t in range(2)])
    active = column_norms(Mt) > lam1.unsqueeze(-1)
    assert bool(active.any()) and not bool(active.all())  # both kinds of features present
    torch.testing.assert_close(H, ref, rtol=1e-10, atol=1e-12)


def test_dual_hessian_on_slots_is_the_full_hessians_submatrix():
    # the dense backward builds ∇²D only on the face coordinates, in feature chunks and in X's
    # dtype: the same numbers as the full float64 Hessian's rows and columns of those slots
    X, _, lam1, _, Mt = _hessian_point(32)
    g = torch.Generator().manual_seed(1)
    full = dual_hessian(Rows(X), Mt, column_norms(Mt), lam1, 10.0, 0.1)
    sidx = torch.stack([torch.randperm(18, generator=g)[:7] for _ in range(2)])
    ref = full.gather(1, sidx.unsqueeze(-1).expand(2, 7, 18))
    ref = ref.gather(2, sidx.unsqueeze(1).expand(2, 7, 7))
    slots = (sidx // 3, sidx % 3)
    for chunk in (3, 1024):
        sub = dual_hessian(Rows(X), Mt, column_norms(Mt), lam1, 10.0, 0.1, chunk, slots)
        torch.testing.assert_close(sub, ref, rtol=1e-12, atol=1e-14)
    Mt32 = Mt.float()
    sub32 = dual_hessian(
        Rows(X.float()), Mt32, column_norms(Mt32), lam1.float(), 10.0, 0.1, 4, slots,
        dtype=torch.float32,
    )  # fmt: skip
    assert sub32.dtype == torch.float64
    torch.testing.assert_close(sub32, ref, rtol=1e-5, atol=1e-6)


def test_iterations_of_an_early_task_do_not_grow_while_it_waits():
    # a task certified early keeps its own iteration count while the batch goes on
    X, labels, Y = _badly_conditioned()
    lam1 = 0.05 * lambda_max(X, labels, 4, tau=1e-3)
    kw = {"tau": 1e-3, "working_set": False}
    alone = GroupSparseSVMSolver(**kw).run(X[:1], Y[:1], lam1[:1])
    batch = GroupSparseSVMSolver(**kw).run(X, Y, lam1)
    assert int(batch.iterations[0]) == int(alone.iterations[0])
    assert int(batch.iterations[0]) < int(batch.iterations[1:].min())


def _sparse_episode():
    g = torch.Generator().manual_seed(21)
    X = torch.relu(torch.randn(4, 30, 400, generator=g, dtype=torch.float64))
    return X, torch.arange(5).repeat_interleave(6).expand(4, -1)


def test_adaptive_metric_scale_gives_the_same_solution_in_fewer_iterations(monkeypatch):
    # sparse solutions meet a fraction of the metric's curvature: the working-set rounds take
    # their steps in s·Q with s < 1, and land on the fixed metric's solution
    scales = []
    orig = fista.adapt_scale

    def spy(*args):
        out = orig(*args)
        scales.append(float(out[2].min()))
        return out

    monkeypatch.setattr(fista, "adapt_scale", spy)
    X, labels = _sparse_episode()
    kw = dict(lam_ratio=0.5, lam2=10.0, tau=0.1, tol=1e-9)
    ada = solve_group_sparse_svm(X, labels, 5, **kw)
    assert scales and min(scales) < 0.5, "the metric scale never went down"
    n_calls = len(scales)
    fixed = solve_group_sparse_svm(X, labels, 5, adaptive=False, **kw)
    assert len(scales) == n_calls, "adaptive=False still adapted the scale"
    assert bool(ada.converged.all()) and bool(fixed.converged.all())
    Y = torch.eye(5, dtype=X.dtype)[labels]
    _, _, gap = objectives(ada.dual.detach(), X, Y, ada.lam1, 10.0, 0.1)  # on all features
    assert bool((gap <= 1e-9).all())
    dist = (ada.weights - fixed.weights).flatten(1).norm(dim=-1)
    assert bool((dist <= _weight_distance_bound(ada, fixed, 10.0)).all())
    assert int(ada.iterations.sum()) < int(fixed.iterations.sum())


def test_a_step_that_breaks_the_majorisation_is_rejected_and_the_solve_recovers(monkeypatch):
    # force one far too small scale: the next step overshoots, is rejected (the task stays at
    # its point, raises its scale and sets a floor from the curvature it met), and the solve
    # still certifies, in about the iterations it takes unforced
    X, labels = _sparse_episode()
    kw = dict(lam_ratio=0.5, lam2=10.0, tau=0.1, tol=1e-9)
    unforced = solve_group_sparse_svm(X, labels, 5, **kw)
    rejected = []
    orig = fista.adapt_scale

    def undershoot(*args):
        new, Mt_new, s, rej = orig(*args)
        rejected.append(rej.clone())
        if len(rejected) == 1:
            s = torch.full_like(s, 1e-3)
        return new, Mt_new, s, rej

    monkeypatch.setattr(fista, "adapt_scale", undershoot)
    res = solve_group_sparse_svm(X, labels, 5, **kw)
    assert bool(rejected[1].all()), "the overshooting step was not rejected"
    later = sum(int(r.sum()) for r in rejected[2:])
    assert later <= X.shape[0], f"the scale did not recover ({later} later rejections)"
    assert int(res.iterations.max()) <= int(unforced.iterations.max()) + 5
    assert bool(res.converged.all())
    Y = torch.eye(5, dtype=X.dtype)[labels]
    _, _, gap = objectives(res.dual.detach(), X, Y, res.lam1, 10.0, 0.1)
    assert bool((gap <= 1e-9).all())


@pytest.mark.parametrize("p", [1000, 1111])
def test_left_then_right_in_chunks_matches_the_two_products(p, monkeypatch):
    # the fused pass runs X's features chunk by chunk (every feature once, in order); its
    # result and the stored left product are those of the two whole products
    monkeypatch.setattr(tuning, "FUSE_BYTES", 0)
    monkeypatch.setattr(tuning, "CHUNK_BYTES", 3 * 6 * 128 * 8)  # 128 features per chunk
    g = torch.Generator().manual_seed(5)
    X = torch.randn(3, 6, p, generator=g, dtype=torch.float64)
    # chunks on one thread only (never set_num_threads here: qpth's batched LU breaks after it)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert products._fuse_chunk(X) is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    A = torch.randn(3, 4, 6, generator=g, dtype=torch.float64)
    w = torch.rand(3, 1, p, generator=g, dtype=torch.float64)
    seen = []

    def fn(M, c):
        seen.append((c.start, c.stop))
        return torch.cat([M * w[:, :, c], M.square()], 1)  # (3, 8, |c|): per feature

    assert products._fuse_chunk(X) == 128
    left = torch.empty(3, 4, p, dtype=torch.float64)
    out = products.left_then_right(X, A, fn, out_left=left)
    M = A @ X
    torch.testing.assert_close(left, M)
    torch.testing.assert_close(out, X @ torch.cat([M * w, M.square()], 1).transpose(1, 2))
    assert [a for a, _ in seen] == list(range(0, p, 128)) and seen[-1][1] == p
    rows = Rows(X).subset(torch.tensor([True, False, True]))  # per-task views: whole
    sub = rows.left_then_right(A[[0, 2]], lambda M, c: M * w[[0, 2]][:, :, c])
    torch.testing.assert_close(sub, X[[0, 2]] @ (M[[0, 2]] * w[[0, 2]]).transpose(1, 2))
    assert not rows.fuses() and Rows(X).fuses()


@pytest.mark.parametrize("check_every", [1, 3])
def test_fused_solver_steps_take_the_same_path(check_every, monkeypatch):
    # where X is large, each step's M at the new point and the next step's scores come from
    # one fused pass (with the new point's scores when its certificate will be needed):
    # the iterates, certificates and counts are those of the separate passes
    g = torch.Generator().manual_seed(8)
    X = torch.relu(torch.randn(3, 20, 700, generator=g, dtype=torch.float64))
    labels = torch.arange(4).repeat_interleave(5).expand(3, -1)
    Y = onehot(labels, 4, X.dtype)
    lam1 = 0.3 * lambda_max(X, labels, 4, tau=0.1)
    # tol 1e-10: every certificate of this solve lies ≥ 12% away from it (measured), so
    # round-off in the gaps (≤ 1e-6 relative, below) cannot move a stop by an iteration
    kw = dict(lam2=10.0, tau=0.1, tol=1e-10, working_set=False, check_every=check_every)
    primal = []  # P of every certificate, in order
    cert = fista.certificate

    def record(*args):
        out = cert(*args)
        primal.append(out[0])
        return out

    monkeypatch.setattr(fista, "certificate", record)
    plain = GroupSparseSVMSolver(**kw).run(X, Y, lam1)
    plain_primal = list(primal)
    primal.clear()
    calls = []
    orig = fista.step_pass

    def spy(*args):
        out = orig(*args)
        calls.append(out[-1] is not None)
        return out

    monkeypatch.setattr(fista, "step_pass", spy)
    monkeypatch.setattr(tuning, "FUSE_BYTES", 0)
    monkeypatch.setattr(tuning, "CHUNK_BYTES", 3 * 20 * 128 * 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the chunks' condition
    fused = GroupSparseSVMSolver(**kw).run(X, Y, lam1)
    # every certificate (at y and at α alike) on the same primal values, up to the summation
    # order: the chunked products add p = 700 terms in another order (≤ 700·2⁻⁵³ ≈ 8e-14
    # relative each), and FISTA's momentum carries that round-off through up to ~100 iterations
    # (≤ k² growth), so 1e-9 bounds it on any CPU's kernels; an algorithmic change is O(1e-3)
    assert len(primal) == len(plain_primal)
    for a, b in zip(primal, plain_primal, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    assert len(calls) >= int(plain.iterations.min()) - 1 > 5  # until the batch compacts
    if check_every == 3:
        assert any(calls), "no fused pass computed the new point's certificate"
    assert torch.equal(fused.iterations, plain.iterations)
    torch.testing.assert_close(fused.alpha, plain.alpha, rtol=0, atol=1e-9)  # as above
    torch.testing.assert_close(fused.gap, plain.gap, rtol=1e-6, atol=1e-13)  # sums' order
    torch.testing.assert_close(fused.Mt, plain.Mt)
    assert bool((fused.gap <= 1e-10).all())


@pytest.mark.parametrize("direct_face", [0, 128])
def test_a_loss_blind_to_the_weights_gets_a_zero_gradient(direct_face, monkeypatch):
    # Σ_k W_k = 0 identically (M_j sums to zero over classes), so W.sum() has gradient 0: the
    # implicit system's right-hand side is round-off, on which CG broke down into NaN
    monkeypatch.setattr(tuning, "DIRECT_FACE", direct_face)
    g = torch.Generator().manual_seed(23)
    X = torch.relu(torch.randn(3, 12, 300, generator=g, dtype=torch.float64))
    labels = torch.arange(4).repeat_interleave(3).expand(3, -1)
    for ratio in (0.05, 0.6):
        Xg = X.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = solve_group_sparse_svm(Xg, labels, 4, lam_ratio=ratio, lam2=10.0, tau=0.1)
            res.weights.sum().backward()
        assert float(Xg.grad.abs().max()) < 1e-12, ratio


@pytest.mark.parametrize("ratio", [0.01, 0.05])
def test_ridge_start_moves_down_the_dual_and_saves_iterations(ratio, monkeypatch):
    # dense solutions start from the best point of the dual on the segment to a few FISTA
    # steps on the λ1 = 0 dual (in the Gram matrix): never worse than the cold start, the
    # same certified solution, fewer iterations at small λ1/λ_max
    monkeypatch.setattr(tuning, "RIDGE_MIN_SIZE", 0)  # the test's X is small
    g = torch.Generator().manual_seed(0)
    X = torch.relu(torch.randn(4, 20, 300, generator=g, dtype=torch.float64))
    labels = torch.arange(4).repeat_interleave(5).expand(4, -1)
    Y = onehot(labels, 4, X.dtype)
    kw = dict(lam2=10.0, tau=0.05, tol=1e-9, working_set=False)
    lam1 = ratio * lambda_max(X, labels, 4, tau=0.05)
    a0 = problem.alpha_at_zero(Y, 0.05)
    solver = GroupSparseSVMSolver(**kw)
    rows = Rows(X)
    Mt0 = rows.left((Y - a0).transpose(1, 2))
    steps = []  # the FISTA steps on the λ1 = 0 dual
    prox = Metric.prox

    def spy(*args):
        out = prox(*args)
        steps.append(out[0])
        return out

    monkeypatch.setattr(Metric, "prox", spy)
    a, Mt = ridge_warm_start(rows, Y, lam1, a0, Mt0, solver._metric(rows, 4), 10.0, 0.05, 3)
    monkeypatch.setattr(Metric, "prox", prox)
    assert len(steps) == 3
    torch.testing.assert_close(a.sum(-1), torch.ones(4, 20, dtype=X.dtype))
    assert bool((a >= 0).all())
    torch.testing.assert_close(Mt, (Y - a).transpose(1, 2) @ X)
    # the chosen point is the grid's best by the exact dual, below the start's
    s = torch.linspace(0, 1, tuning.RIDGE_GRID, dtype=X.dtype)
    exact = torch.stack(
        [-objectives(a0 + t * (steps[-1] - a0), X, Y, lam1, 10.0, 0.05)[1] for t in s.tolist()]
    )  # (grid, T)
    torch.testing.assert_close(a, a0 + s[exact.argmin(0)].reshape(-1, 1, 1) * (steps[-1] - a0))
    assert bool((exact.min(0).values < exact[0]).all())
    with_start = solver.run(X, Y, lam1)
    cold = GroupSparseSVMSolver(**kw, ridge_start=0).run(X, Y, lam1)
    assert bool((with_start.gap <= 1e-9).all() and (cold.gap <= 1e-9).all())
    assert int(with_start.iterations.sum()) < int(cold.iterations.sum())
    W = problem.weights_from_m(with_start.Mt, lam1, 10.0)
    W0 = problem.weights_from_m(cold.Mt, lam1, 10.0)
    assert float((W - W0).norm()) < 1e-3 * float(W0.norm())


@pytest.mark.parametrize("backward", ["dense", "cg", "direct", "generic"])
@pytest.mark.parametrize("lam_ratio", [0.2, 0.6])
def test_lam_max_gradient_matches_finite_differences_of_the_output(
    backward, lam_ratio, monkeypatch
):
    # λ1 = ratio · λ_max(X) moves with X: with lam1_grad="lam_max" the gradient is that of the
    # weights as the function of X the head computes (λ_max recomputed at X ± εD), through
    # both the dual solution and the block soft-threshold, on every backward path

    X, labels = _episode(seed=21, T=2, n=8, p=6)  # a point where the faces are strict
    kw = dict(lam_ratio=lam_ratio, lam2=0.5, tau=0.3, tol=1e-14, max_iter=100000, ridge_start=0)
    if backward == "direct":  # the CG backward's direct solve on the face, forced
        monkeypatch.setattr(tuning, "DIRECT_ACTIVE", 1.0)
    mode = {"direct": "cg"}.get(backward, backward)
    Xg = X.clone().requires_grad_(True)
    res = solve_group_sparse_svm(Xg, labels, 3, backward=mode, lam1_grad="lam_max", **kw)
    assert 0 < float((res.weights != 0).any(1).double().mean()) < 1  # sparse: BST matters
    C = torch.randn(res.weights.shape, generator=torch.Generator().manual_seed(2), dtype=X.dtype)
    (g,) = torch.autograd.grad((res.weights * C).sum(), Xg)
    fixed = solve_group_sparse_svm(Xg, labels, 3, backward=mode, lam1_grad="fixed", **kw)
    (g_fixed,) = torch.autograd.grad((fixed.weights * C).sum(), Xg)
    D = torch.randn(X.shape, generator=torch.Generator().manual_seed(3), dtype=X.dtype)
    # The difference quotient errs by the truncation (≤ 1.2e-7 at ε = 1e-4 on this episode,
    # measured at ε = 1e-4 … 1e-3) plus the solves' error over ε: certified at a 1e-14 gap,
    # the weights at X ± εD still differ from the optimum's by up to ~2e-9 depending on the
    # CPU's round-off (Intel's MKL path moved the quotient by 1e-3 at ε = 1e-6), so ≤ 2e-5 at
    # ε = 1e-4. Hence ε = 1e-4 and a 1e-4 tolerance, which still separates the constant-λ1
    # gradient (off by 0.02-0.1 here).
    eps = 1e-4
    with torch.no_grad():
        fp = (solve_group_sparse_svm(X + eps * D, labels, 3, **kw).weights * C).sum()
        fm = (solve_group_sparse_svm(X - eps * D, labels, 3, **kw).weights * C).sum()
    fd = float((fp - fm) / (2 * eps))
    assert abs(float((g * D).sum()) - fd) <= 1e-4 * max(1.0, abs(fd))
    # and the constant-λ1 gradient is a different one (the test can tell them apart)
    assert abs(float((g_fixed * D).sum()) - fd) > 1e-2 * max(1.0, abs(fd))


def test_lam_max_gradient_leaves_values_and_the_fixed_gradient_alone():
    X, labels = _episode(seed=12, T=3, n=9, p=7)
    kw = dict(lam_ratio=0.3, lam2=10.0, tau=0.1, tol=1e-12)
    plain = solve_group_sparse_svm(X, labels, 3, **kw)
    Xg = X.clone().requires_grad_(True)
    through = solve_group_sparse_svm(Xg, labels, 3, lam1_grad="lam_max", **kw)
    assert torch.equal(plain.weights, through.weights.detach())
    assert torch.equal(plain.lam1, through.lam1)
    ones = solve_group_sparse_svm(Xg, labels, 3, lam_ratio=1.0, lam1_grad="lam_max", tol=1e-12)
    assert not bool(ones.weights.any())  # λ_max's value is kept bitwise
    with pytest.raises(ValueError, match="lam1_grad"):
        solve_group_sparse_svm(X, labels, 3, lam1_grad="exact", **kw)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        solve_group_sparse_svm(X, labels, 3, lam_ratio=1.5)
