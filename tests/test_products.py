"""The solver's products with X: oneDNN for large float32 CPU operands, torch.matmul otherwise."""

from __future__ import annotations

import warnings

import pytest
import torch

from metasparse.solvers import products, solve_group_sparse_svm, tuning
from metasparse.solvers.products import left_then_right
from metasparse.solvers.rows import Rows


def _onednn_or_skip() -> None:
    if not products._op_works():
        pytest.skip("this PyTorch build has no working oneDNN inner product")


@pytest.fixture
def everywhere(monkeypatch):
    """oneDNN for every float32 CPU operand, however small (the thresholds are speed choices)."""
    _onednn_or_skip()
    monkeypatch.setattr(tuning, "THIN_MIN", 0)
    monkeypatch.setattr(tuning, "GRAM_MIN", 0)


def _data(B=3, n=7, p=50, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, p, generator=g)
    return X, torch.randn(B, m, n, generator=g), torch.randn(B, m, p, generator=g)


def test_the_onednn_products_equal_matmul(everywhere):
    X, A, W = _data()
    assert products.thin_onednn(X)
    torch.testing.assert_close(products.left(A, X), A @ X)
    out = torch.full((3, 4, 50), float("nan"))
    assert products.left(A.transpose(1, 2).contiguous().transpose(1, 2), X, out=out) is out
    torch.testing.assert_close(out, A @ X)
    torch.testing.assert_close(products.right(X, W), X @ W.transpose(1, 2))
    torch.testing.assert_close(products.right(X, W.transpose(1, 2).contiguous().mT), X @ W.mT)
    torch.testing.assert_close(products.gram(X), X @ X.transpose(1, 2))


def test_the_onednn_path_is_taken_where_it_is_meant_to_be(everywhere, monkeypatch):
    X, A, W = _data()
    calls = []
    real = products._linear
    monkeypatch.setattr(products, "_linear", lambda a, w: calls.append(1) or real(a, w))
    products.left(A, X), products.right(X, W), products.gram(X)
    assert len(calls) == 3 * X.shape[0]  # one call per task and product
    calls.clear()
    # float64, rows that are not dense, a graph to record, another device type: matmul
    products.left(A.double(), X.double())
    products.right(X[:, :, ::2], W[:, :, ::2])
    Xg = X.clone().requires_grad_(True)
    products.right(Xg, W).sum().backward()
    torch.testing.assert_close(Xg.grad, W.sum(1, keepdim=True).expand_as(X))
    with torch.no_grad():
        products.gram(Xg)  # no graph: oneDNN
    assert len(calls) == X.shape[0]
    monkeypatch.setattr(products, "ONEDNN", False)
    products.gram(X)
    assert len(calls) == X.shape[0]


def test_the_size_thresholds_keep_small_operands_on_matmul(monkeypatch):
    _onednn_or_skip()
    calls = []
    real = products._linear
    monkeypatch.setattr(products, "_linear", lambda a, w: calls.append(a.shape) or real(a, w))
    small = torch.randn(2, 25, 2560)  # 64K entries per task: below both thresholds
    products.left(torch.randn(2, 5, 25), small), products.gram(small)
    assert not calls and not products.thin_onednn(small)
    mid = torch.randn(1, 75, 2560)  # 192K: the Gram matrix only
    products.right(mid, torch.randn(1, 5, 2560)), products.gram(mid)
    assert calls == [(75, 2560)] and not products.thin_onednn(mid)
    assert products.thin_onednn(torch.empty(1, 75, 16000))  # 1.2M: all three


def test_a_missing_or_failing_op_falls_back_to_matmul_with_one_warning(monkeypatch):
    def broken(a, w):
        raise RuntimeError("no such op")

    monkeypatch.setattr(products, "_linear", broken)
    monkeypatch.setattr(products, "_checked", None)
    monkeypatch.setattr(tuning, "THIN_MIN", 0)
    monkeypatch.setattr(tuning, "GRAM_MIN", 0)
    X, A, W = _data()
    with pytest.warns(RuntimeWarning, match="oneDNN product is unavailable.*no such op"):
        torch.testing.assert_close(products.left(A, X), A @ X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        torch.testing.assert_close(products.right(X, W), X @ W.mT)
        torch.testing.assert_close(products.gram(X), X @ X.mT)
    assert not products.thin_onednn(X)


def test_rows_and_fused_passes_run_whole_through_onednn(everywhere, monkeypatch):
    monkeypatch.setattr(tuning, "FUSE_BYTES", 0)  # X would be chunked without oneDNN
    X, A, _ = _data(p=2000)
    seen = []

    def fn(M, c):
        seen.append(c)
        return 2.0 * M

    left = torch.empty(3, 4, 2000)
    out = left_then_right(X, A, fn, out_left=left)
    assert seen == [slice(None)]  # one whole map, no chunks
    torch.testing.assert_close(left, A @ X)
    torch.testing.assert_close(out, X @ (2.0 * (A @ X)).mT, rtol=1e-4, atol=1e-4)
    rows = Rows(X).subset(torch.tensor([True, False, True]))
    assert not rows.fuses() and Rows(X).fuses()
    torch.testing.assert_close(rows.left(A[:2]), A[:2] @ X[[0, 2]])
    torch.testing.assert_close(rows.gram().float(), X[[0, 2]] @ X[[0, 2]].mT, rtol=1e-5, atol=1e-3)


def test_the_solver_certifies_the_same_solution_through_onednn(monkeypatch):
    # the whole solve and its gradient with every product through oneDNN, against matmul
    _onednn_or_skip()
    g = torch.Generator().manual_seed(3)
    X = torch.relu(torch.randn(3, 30, 400, generator=g))
    q = torch.randn(3, 9, 400, generator=g)
    y = torch.arange(5).repeat_interleave(6).expand(3, -1).contiguous()
    runs = {}
    for onednn in (False, True):
        monkeypatch.setattr(tuning, "THIN_MIN", 0 if onednn else 10**12)
        monkeypatch.setattr(tuning, "GRAM_MIN", 0 if onednn else 10**12)
        for ratio in (0.05, 0.5):
            Xg = X.clone().requires_grad_(True)
            res = solve_group_sparse_svm(Xg, y, 5, lam_ratio=ratio, tol=1e-5)
            (q @ res.weights.mT).square().sum().backward()
            assert bool((res.gap <= 1e-5).all())
            runs[onednn, ratio] = res.weights.detach(), Xg.grad
    for ratio in (0.05, 0.5):
        (W0, g0), (W1, g1) = runs[False, ratio], runs[True, ratio]
        # the same iterates up to float32 round-off (1.4e-6 and 1.5e-6 at 0.5 when written)
        assert float((W1 - W0).norm() / W0.norm()) < 1e-4
        assert float((g1 - g0).norm() / g0.norm()) < 1e-4
