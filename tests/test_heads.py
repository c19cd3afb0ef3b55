"""Heads: one behaviour matrix over every registered head, then head-specific oracles.

The matrix (shapes, no_grad, dtypes, gradients, scale, separable episodes, equivariance, bad
input) runs on every name of ``available_heads()``; a head whose module does not import yet is
skipped with the import error. The oracles compare Ridge with a NumPy solve and SVM-CS with
cvxpy on the QP qpth is given (MetaOptNet's "+I" jitter included).
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from metasparse.heads import Head, available_heads, build_head
from metasparse.heads.proto import PrototypicalHead
from metasparse.heads.ridge import RidgeHead, ridge_weights
from metasparse.heads.svm_cs import (
    SVMCSHead,
    crammer_singer_certificate,
    project_rows_to_simplex,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_head(name: str, **kwargs) -> Head:
    """Build head ``name``; skip the test when its module is not importable yet."""
    try:
        return build_head(name, **kwargs)
    except ImportError as exc:
        pytest.skip(f"head {name!r} is not importable yet: {exc}")


def episode(
    tasks: int = 2,
    n_way: int = 3,
    shot: int = 4,
    n_query: int = 5,
    d: int = 8,
    dtype: torch.dtype = torch.float64,
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, support, support labels, query labels; classes sit at 5·e_k plus noise."""
    g = torch.Generator().manual_seed(seed)
    means = 5.0 * torch.eye(n_way, d, dtype=torch.float64)
    s_lab = torch.arange(n_way).repeat(shot)
    s_lab = torch.stack([s_lab[torch.randperm(len(s_lab), generator=g)] for _ in range(tasks)])
    q_lab = torch.stack([torch.randint(n_way, (n_query,), generator=g) for _ in range(tasks)])
    support = means[s_lab] + noise * torch.randn(
        tasks, n_way * shot, d, generator=g, dtype=means.dtype
    )
    query = means[q_lab] + noise * torch.randn(tasks, n_query, d, generator=g, dtype=means.dtype)
    return query.to(dtype), support.to(dtype), s_lab, q_lab


HEADS = available_heads()


# --------------------------------------------------------------------------- behaviour matrix


def test_the_four_heads_are_registered():
    assert {"proto", "ridge", "svm_cs", "group_sparse_svm"} <= set(HEADS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", HEADS)
def test_logits_shape_dtype_and_float_stats(name, dtype, device):
    head = make_head(name).to(device)
    query, support, labels, _ = (t.to(device) for t in episode(dtype=dtype))
    logits, stats = head(query, support, labels, 3)
    assert logits.shape == (2, 5, 3)
    assert logits.dtype == dtype and logits.device.type == device
    assert torch.isfinite(logits).all()
    assert all(isinstance(k, str) and type(v) is float for k, v in stats.items()), stats


@pytest.mark.parametrize("name", HEADS)
def test_works_under_no_grad(name):
    head = make_head(name)
    query, support, labels, _ = episode()
    with torch.no_grad():
        logits, _ = head(query, support, labels, 3)
    assert not logits.requires_grad and torch.isfinite(logits).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", HEADS)
def test_gradients_reach_support_and_query(name, dtype):
    head = make_head(name)
    query, support, labels, _ = episode(dtype=dtype, noise=1.0)
    query.requires_grad_(True)
    support.requires_grad_(True)
    logits, _ = head(query, support, labels, 3)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    (logits * weights).sum().backward()
    for t in (support, query):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


@pytest.mark.parametrize("name", HEADS)
def test_learnable_scale_multiplies_the_logits(name):
    head = make_head(name)
    assert isinstance(dict(head.named_parameters()).get("scale"), torch.nn.Parameter)
    query, support, labels, _ = episode(noise=1.0)
    with torch.no_grad():
        head.scale.fill_(2.5)
        raw, _ = head.fit_predict(query, support, labels, 3)
    logits, _ = head(query, support, labels, 3)
    torch.testing.assert_close(logits, 2.5 * raw.to(logits.dtype), rtol=1e-6, atol=1e-8)
    # d/ds Σ (s·raw)·w = Σ raw·w. Random weights, not logits.sum(): SVM-CS logits sum to zero
    # over classes in exact arithmetic, so that gradient would be round-off of either sign.
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5), dtype=logits.dtype)
    (logits * w).sum().backward()
    expected = (raw.to(logits.dtype) * w).sum()
    assert head.scale.grad is not None and abs(float(expected)) > 1e-3
    grad = head.scale.grad
    torch.testing.assert_close(grad, expected.to(grad.dtype).reshape(grad.shape))
    fixed = make_head(name, learn_scale=False, init_scale=3.0)
    assert "scale" not in dict(fixed.named_parameters())
    assert float(fixed.scale) == 3.0


@pytest.mark.parametrize("name", HEADS)
def test_separable_episodes_are_classified_correctly(name):
    head = make_head(name)
    query, support, labels, q_lab = episode(tasks=3, n_way=5, shot=3, n_query=20, d=12)
    logits, _ = head(query, support, labels, 5)
    assert torch.equal(logits.argmax(-1), q_lab)


@pytest.mark.parametrize("name", HEADS)
def test_relabelling_classes_permutes_the_logits(name):
    head = make_head(name)
    query, support, labels, _ = episode(n_way=4, noise=1.0, seed=3)
    perm = torch.tensor([2, 0, 3, 1])
    logits, _ = head(query, support, labels, 4)
    relabelled, _ = head(query, support, perm[labels], 4)
    torch.testing.assert_close(relabelled[..., perm], logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", HEADS)
def test_support_order_does_not_matter(name):
    head = make_head(name)
    query, support, labels, _ = episode(noise=1.0, seed=4)
    order = torch.randperm(support.shape[1], generator=torch.Generator().manual_seed(5))
    logits, _ = head(query, support, labels, 3)
    shuffled, _ = head(query, support[:, order], labels[:, order], 3)
    torch.testing.assert_close(shuffled, logits, rtol=1e-5, atol=1e-6)


def _bad_inputs():
    query, support, labels, _ = episode()
    nan_support = support.clone()
    nan_support[0, 1, 2] = float("nan")
    inf_query = query.clone()
    inf_query[1, 0, 0] = float("inf")
    return {
        "support_2d": (query, support[0], labels, 3, "flatten"),
        "feature_size_mismatch": (query[..., :-1], support, labels, 3, "agree"),
        "labels_shape": (query, support, labels[:, :-1], 3, "support_labels must have shape"),
        "label_too_large": (query, support, labels, 2, "must lie in"),
        "negative_label": (query, support, labels - 1, 3, "must lie in"),
        "float_labels": (query, support, labels.double(), 3, "integer"),
        "nan_support": (query, nan_support, labels, 3, "NaN"),
        "inf_query": (inf_query, support, labels, 3, "NaN or Inf"),
        "one_way": (query, support, torch.zeros_like(labels), 1, "at least 2"),
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
@pytest.mark.parametrize("name", HEADS)
def test_bad_input_raises_a_clear_value_error(name, case):
    head = make_head(name)
    query, support, labels, n_way, message = _bad_inputs()[case]
    with pytest.raises(ValueError, match=message):
        head(query, support, labels, n_way)


@pytest.mark.parametrize("name", HEADS)
def test_heads_do_not_change_the_thread_count(name):
    before = torch.get_num_threads()
    head = make_head(name)
    query, support, labels, _ = episode(noise=1.0)
    logits, _ = head(query, support, labels, 3)
    logits.sum().backward()
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- prototypical


def test_proto_matches_explicit_distances():
    query, support, labels, _ = episode(noise=1.0)
    for normalize, denom in ((True, support.shape[-1]), (False, 1.0)):
        logits, _ = PrototypicalHead(normalize=normalize)(query, support, labels, 3)
        for t in range(2):
            protos = torch.stack([support[t][labels[t] == k].mean(0) for k in range(3)])
            expected = -(torch.cdist(query[t], protos) ** 2) / denom
            torch.testing.assert_close(logits[t], expected)


def test_proto_rejects_a_class_without_support():
    query, support, labels, _ = episode()
    with pytest.raises(ValueError, match="no support example"):
        PrototypicalHead()(query, support, labels, 4)


# --------------------------------------------------------------------------- ridge


@pytest.mark.parametrize("d", [6, 40])  # n = 12 support examples: primal-sized and dual-sized
def test_ridge_primal_equals_dual_and_numpy(d):
    query, support, labels, _ = episode(d=d, noise=1.0)
    lam = 3.0
    primal, _ = RidgeHead(lam=lam, solve="primal")(query, support, labels, 3)
    dual, _ = RidgeHead(lam=lam, solve="dual")(query, support, labels, 3)
    auto, _ = RidgeHead(lam=lam)(query, support, labels, 3)
    torch.testing.assert_close(primal, dual, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(auto, dual, rtol=1e-9, atol=1e-9)
    for t in range(2):
        x, y = support[t].numpy(), np.eye(3)[labels[t].numpy()]
        w = np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)
        np.testing.assert_allclose(primal[t].detach().numpy(), query[t].numpy() @ w, rtol=1e-9)


def test_ridge_weights_default_lambda_and_bad_options():
    assert RidgeHead().lam == 50.0
    _, support, labels, _ = episode()
    targets = torch.nn.functional.one_hot(labels, 3).double()
    with pytest.raises(ValueError, match="solve"):
        ridge_weights(support, targets, 1.0, solve="qr")
    with pytest.raises(ValueError, match="lam"):
        RidgeHead(lam=0.0)


# --------------------------------------------------------------------------- SVM-CS


def _cvxpy_cs_dual(support: np.ndarray, labels: np.ndarray, n_way: int, C: float, jitter: float):
    """MetaOptNet's SVM-CS QP (with its "+I" jitter) solved by cvxpy; returns α (n, K)."""
    cp = pytest.importorskip("cvxpy")
    y = np.eye(n_way)[labels]
    alpha = cp.Variable(y.shape)
    objective = 0.5 * cp.sum_squares(support.T @ alpha) + 0.5 * jitter * cp.sum_squares(alpha)
    problem = cp.Problem(
        cp.Minimize(objective - cp.sum(cp.multiply(y, alpha))),
        [alpha <= C * y, cp.sum(alpha, axis=1) == 0],
    )
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    assert problem.status == "optimal"
    return alpha.value


@pytest.mark.parametrize(("C", "jitter"), [(0.1, 1.0), (1.0, 1.0), (0.5, 0.1)])
def test_svm_cs_matches_cvxpy_on_the_same_qp(C, jitter):
    query, support, labels, _ = episode(n_way=3, shot=3, d=5, noise=1.5, seed=7)
    head = SVMCSHead(C_reg=C, jitter=jitter, max_iter=40)
    alpha = head.solve_dual(support, labels, 3)
    logits, _ = head(query, support, labels, 3)
    for t in range(2):
        ref = _cvxpy_cs_dual(support[t].numpy(), labels[t].numpy(), 3, C, jitter)
        np.testing.assert_allclose(alpha[t].detach().numpy(), ref, atol=1e-6 * max(C, 1.0))
        expected = query[t].numpy() @ support[t].numpy().T @ ref
        np.testing.assert_allclose(logits[t].detach().numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("C", "jitter"), [(0.1, 1.0), (0.5, 0.3)])
def test_svm_cs_certificate_bounds_the_suboptimality_of_early_stopped_solves(C, jitter):
    _, support, labels, _ = episode(n_way=4, shot=5, d=10, noise=2.0, seed=11)
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    gram = support.bmm(support.transpose(1, 2))
    best = crammer_singer_certificate(
        gram,
        onehot,
        SVMCSHead(C_reg=C, jitter=jitter, max_iter=50).solve_dual(support, labels, 4),
        C,
        jitter,
    )
    # At the optimum, primal and dual values meet: the τ = jitter·C mapping is right.
    assert best["rel_gap"].abs().max() < 1e-7
    torch.testing.assert_close(best["primal"], best["dual"], rtol=1e-7, atol=1e-9)
    for iters in (1, 2, 3, 5):
        alpha = SVMCSHead(C_reg=C, jitter=jitter, max_iter=iters).solve_dual(support, labels, 4)
        cert = crammer_singer_certificate(gram, onehot, alpha, C, jitter)
        suboptimality = cert["primal"] - best["primal"]
        assert (suboptimality >= -1e-9).all()
        assert (cert["rel_gap"] * cert["primal"].abs() >= suboptimality - 1e-9).all()


def test_project_rows_to_simplex_matches_definition():
    v = torch.randn(50, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    p = project_rows_to_simplex(v)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(50, dtype=torch.float64))
    # Optimality: ⟨v − p, q − p⟩ ≤ 0 for every vertex q of the simplex.
    gaps = (v - p) @ torch.eye(6, dtype=torch.float64) - ((v - p) * p).sum(-1, keepdim=True)
    assert gaps.max() < 1e-12


def test_svm_cs_double_precision_agrees_with_float32():
    query, support, labels, _ = episode(dtype=torch.float32, noise=1.0, seed=2)
    head32, head64 = SVMCSHead(), SVMCSHead(double_precision=True)
    single, _ = head32(query, support, labels, 3)
    double, stats = head64(query, support, labels, 3)
    assert double.dtype == torch.float32
    assert stats["qp_rel_gap"] < 1e-6
    # How far apart the two may be follows from the certificate, not from one CPU's round-off:
    # the primal is λ2-strongly convex in W (λ2 = 1/C), so ‖W − W*‖_F² ≤ 2·gap/λ2 for each
    # solution's absolute gap (computed in float64), and |⟨q, W_k − W*_k⟩| ≤ ‖q‖·‖W − W*‖_F.
    gram = support.double().bmm(support.double().transpose(1, 2))
    onehot = torch.nn.functional.one_hot(labels, 3).double()
    radius = 0.0
    for head in (head32, head64):
        alpha = head.solve_dual(support, labels, 3).detach().double()
        cert = crammer_singer_certificate(gram, onehot, alpha, head.C_reg, head.jitter)
        gap = (cert["primal"] - cert["dual"]).clamp_min(0.0)
        radius = radius + (2.0 * gap * head.C_reg).sqrt()  # (tasks,)
    bound = query.double().norm(dim=-1) * radius[:, None]  # (tasks, n_query)
    # plus float32 round-off of the logits themselves (a few ulps of their size)
    bound = bound[..., None] + 1e-5 * double.double().abs().amax()
    assert bool(((single.double() - double.double()).abs() <= bound).all())


def test_svm_cs_gradient_matches_finite_differences():
    query, support, labels, _ = episode(tasks=1, n_way=3, shot=2, n_query=3, d=4, noise=1.0)
    head = SVMCSHead(C_reg=0.5, max_iter=50, learn_scale=False)
    weights = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def objective(s: torch.Tensor) -> torch.Tensor:
        return (head(query, s, labels, 3)[0] * weights).sum()

    s = support.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(s), s)
    h = 1e-6
    numeric = torch.zeros_like(support)
    for idx in np.ndindex(*support.shape):
        up, down = support.clone(), support.clone()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (objective(up) - objective(down)) / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-4, atol=1e-6)


def test_svm_cs_defaults_follow_metaoptnet_and_bad_options_raise():
    head = SVMCSHead()
    assert (head.C_reg, head.max_iter, head.jitter, head.double_precision) == (0.1, 15, 1.0, False)
    for kwargs, message in (
        ({"C_reg": 0.0}, "C_reg"),
        ({"max_iter": 0}, "max_iter"),
        ({"jitter": 0.0}, "jitter"),
        ({"not_improved_lim": 0}, "not_improved_lim"),
    ):
        with pytest.raises(ValueError, match=message):
            SVMCSHead(**kwargs)


def test_svm_cs_5way_15shot_8_episodes_single_thread_is_finite():
    """Batched LU (qpth's KKT solves) is only safe single-threaded on CPU: conftest sets 1."""
    assert torch.get_num_threads() == 1
    query, support, labels, q_lab = episode(
        tasks=8, n_way=5, shot=15, n_query=6, d=64, dtype=torch.float32, noise=1.0, seed=9
    )
    logits, stats = SVMCSHead()(query, support, labels, 5)
    assert torch.isfinite(logits).all()
    assert stats["qp_nonfinite"] == 0.0 and stats["qp_rel_gap"] < 1e-3
    assert (logits.argmax(-1) == q_lab).float().mean() > 0.9
    assert torch.get_num_threads() == 1


@pytest.mark.slow
def test_svm_cs_under_two_threads_fails_loudly_or_solves():
    """Documents the PyTorch bug: after set_num_threads(2), batched CPU LU may return bad pivots.

    The head must then raise a RuntimeError naming the fix, never return garbage silently.
    (conftest restores one thread afterwards, which makes LU safe again.)
    """
    query, support, labels, _ = episode(
        tasks=8, n_way=5, shot=15, n_query=6, d=64, dtype=torch.float32, noise=1.0, seed=9
    )
    torch.set_num_threads(2)
    try:
        logits, stats = SVMCSHead()(query, support, labels, 5)
    except RuntimeError as exc:
        assert "set_num_threads(1)" in str(exc)
    else:
        assert torch.isfinite(logits).all() and stats["qp_rel_gap"] < 1e-3


def test_group_sparse_module_name_is_the_registered_one():
    """The matrix above skips group_sparse_svm only while its module is missing."""
    try:
        importlib.import_module("metasparse.heads.group_sparse_svm")
    except ImportError as exc:
        pytest.skip(f"metasparse.heads.group_sparse_svm not importable yet: {exc}")
    assert isinstance(build_head("group_sparse_svm"), Head)


@pytest.mark.parametrize("name", HEADS)
def test_log_scale_is_learned_in_log_space(name):
    head = make_head(name, log_scale=True, init_scale=2.0)
    params = dict(head.named_parameters())
    assert "scale" not in params and float(params["scale_log"]) == pytest.approx(math.log(2.0))
    query, support, labels, _ = episode(noise=1.0)
    with torch.no_grad():
        raw, _ = head.fit_predict(query, support, labels, 3)
    logits, _ = head(query, support, labels, 3)
    torch.testing.assert_close(logits, 2.0 * raw.to(logits.dtype), rtol=1e-6, atol=1e-8)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5), dtype=logits.dtype)
    (logits * w).sum().backward()
    # d/d(log s) of Σ s·raw·w is s·Σ raw·w
    expected = 2.0 * (raw.to(logits.dtype) * w).sum()
    grad = params["scale_log"].grad
    torch.testing.assert_close(grad, expected.to(grad.dtype).reshape(grad.shape))
    with pytest.raises(ValueError, match="init_scale > 0"):
        make_head(name, log_scale=True, init_scale=0.0)
