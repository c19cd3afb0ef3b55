"""GroupSparseSVMHead: interface, statistics, no_grad, dtypes, query/support gradients."""

from __future__ import annotations

import pytest
import torch

from metasparse.heads import build_head
from metasparse.heads.group_sparse_svm import GroupSparseSVMHead
from metasparse.heads.svm_cs import SVMCSHead, crammer_singer_certificate
from metasparse.solvers import solve_group_sparse_svm

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(dtype=torch.float64, device="cpu", T=2, way=3, shot=3, n_query=4, d=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(T, way * shot, d, generator=g, dtype=dtype).to(device)
    labels = torch.arange(way).repeat_interleave(shot).expand(T, -1).contiguous().to(device)
    query = torch.randn(T, n_query, d, generator=g, dtype=dtype).to(device)
    return query, support, labels


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_stats_and_no_grad(dtype, device):
    head = GroupSparseSVMHead(lam_ratio=0.1, lam2=1.0, tau=0.2).to(device)
    query, support, labels = _batch(dtype, device)
    logits, stats = head(query, support, labels, 3)
    assert logits.shape == (2, 4, 3) and logits.dtype == dtype and logits.device == support.device
    for key in ("features_used", "gap", "iterations", "converged", "lam1", "support_acc"):
        assert isinstance(stats[key], float)
    assert 0 < stats["features_used"] <= 1 and stats["gap"] <= 1e-5 and stats["converged"] == 1
    with torch.no_grad():
        logits_ng, _ = head(query, support, labels, 3)
    assert not logits_ng.requires_grad
    assert torch.allclose(logits_ng, logits.detach())


def test_logits_are_query_times_weights_times_scale():
    from metasparse.solvers import solve_group_sparse_svm

    head = GroupSparseSVMHead(lam_ratio=0.2, lam2=1.0, tau=0.2, init_scale=2.5)
    query, support, labels = _batch()
    logits, _ = head(query, support, labels, 3)
    res = solve_group_sparse_svm(support, labels, 3, lam_ratio=0.2, lam2=1.0, tau=0.2)
    assert torch.allclose(logits, 2.5 * query @ res.weights.transpose(1, 2))
    logits.sum().backward()
    assert head.scale.grad is not None


def test_query_gradient_matches_finite_differences_and_support_gradient_fixes_lam1():
    """Query: central differences. Support: the head's gradient treats λ1 = ratio·λ_max as a
    constant, so it equals the solver's gradient at that absolute λ1 (whose finite-difference
    check is in test_solver_group_sparse.py)."""
    from metasparse.solvers import lambda_max, solve_group_sparse_svm

    head = GroupSparseSVMHead(
        lam_ratio=0.2, lam2=1.0, tau=0.3, tol=1e-14, max_iter=100000, lam1_grad="fixed"
    )
    query, support, labels = _batch()
    query.requires_grad_(True)
    support.requires_grad_(True)
    logits, _ = head(query, support, labels, 3)
    C = torch.randn_like(logits)
    gq, gs = torch.autograd.grad((logits * C).sum(), (query, support))
    eps = 1e-5
    for which, grad in ((0, gq),):
        D = torch.randn_like(grad)
        vals = []
        for sign in (1, -1):
            args = [query.detach(), support.detach()]
            args[which] = args[which] + sign * eps * D
            with torch.no_grad():
                vals.append((head(args[0], args[1], labels, 3)[0] * C).sum())
        fd = float((vals[0] - vals[1]) / (2 * eps))
        assert abs(float((grad * D).sum()) - fd) <= 1e-5 * max(1.0, abs(fd))
    lam1 = 0.2 * lambda_max(support, labels, 3, tau=0.3)
    sup = support.detach().requires_grad_(True)
    res = solve_group_sparse_svm(
        sup, labels, 3, lam1=lam1, lam2=1.0, tau=0.3, tol=1e-14, max_iter=100000
    )
    ref = head.scale * query.detach() @ res.weights.transpose(1, 2)
    (gs_ref,) = torch.autograd.grad((ref * C).sum(), sup)
    assert torch.allclose(gs, gs_ref, rtol=1e-9, atol=1e-12)


def test_registry_and_ratio_extremes():
    head = build_head("group_sparse_svm", lam_ratio=1.0, lam2=1.0, learn_scale=False)
    assert isinstance(head, GroupSparseSVMHead)
    query, support, labels = _batch()
    logits, stats = head(query, support, labels, 3)
    assert torch.equal(logits, torch.zeros_like(logits)) and stats["features_used"] == 0.0


def test_defaults_are_svm_cs_at_lam_ratio_zero():
    # like for like: λ2 = 1/C and τ = jitter·C of the default SVM-CS head (C = 0.1, jitter 1)
    head, svm = GroupSparseSVMHead(), SVMCSHead()
    assert head.lam2 == 1.0 / svm.C_reg and head.tau == pytest.approx(svm.jitter * svm.C_reg)
    assert head.tol == 1e-5 and head.lam1_grad == "lam_max"
    query, support, labels = _batch(T=3, way=5, shot=4, n_query=6, d=12, seed=4)
    ours = GroupSparseSVMHead(lam_ratio=0.0, tol=1e-12, learn_scale=False)
    logits, stats = ours(query, support, labels, 5)
    svm = SVMCSHead(max_iter=50, learn_scale=False)
    alpha = svm.solve_dual(support, labels, 5)
    ref = query @ support.transpose(1, 2) @ alpha
    # both solve one λ2-strongly convex primal: ‖W − W*‖_F ≤ sqrt(2·gap/λ2) for each one's
    # certified absolute gap, so the logits differ by at most ‖q‖ times the sum of the radii
    gram = support @ support.transpose(1, 2)
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    cert = crammer_singer_certificate(gram, onehot, alpha.detach(), svm.C_reg, svm.jitter)
    gap_svm = (cert["primal"] - cert["dual"]).clamp_min(0.0)
    res = solve_group_sparse_svm(support, labels, 5, lam_ratio=0.0, lam2=10.0, tau=0.1, tol=1e-12)
    gap_ours = res.gap * res.primal.abs().clamp_min(1.0)  # the relative gap's denominator
    radius = (2 * gap_svm / 10.0).sqrt() + (2 * gap_ours / 10.0).sqrt()
    bound = query.norm(dim=-1) * radius[:, None] + 1e-12
    assert bool(((logits - ref).abs().amax(-1) <= bound).all())
    assert float(bound.max()) < 1e-4  # tight enough to mean "the same classifier"
    assert stats["features_used"] == 1.0 and stats["lam1"] == 0.0


def test_lam_max_gradient_matches_finite_differences_of_the_head():
    # the head's own output as a function of the support, λ1 = ratio·λ_max recomputed, at a
    # point where it is differentiable (strict complementarity: every face and active set
    # stays put under ±eps, which the three step sizes 1e-5…1e-7 agreeing to 1e-7 showed)
    head = GroupSparseSVMHead(lam_ratio=0.3, tol=1e-14, max_iter=100000, lam1_grad="lam_max")
    query, support, labels = _batch(seed=26)
    sup = support.clone().requires_grad_(True)
    logits, stats = head(query, sup, labels, 3)
    assert 0.0 < stats["features_used"] < 1.0
    C = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1), dtype=logits.dtype)
    (g,) = torch.autograd.grad((logits * C).sum(), sup)
    D = torch.randn(support.shape, generator=torch.Generator().manual_seed(2), dtype=support.dtype)
    eps = 1e-6
    with torch.no_grad():
        up = (head(query, support + eps * D, labels, 3)[0] * C).sum()
        down = (head(query, support - eps * D, labels, 3)[0] * C).sum()
    fd = float((up - down) / (2 * eps))
    assert abs(float((g * D).sum()) - fd) <= 1e-5 * max(1.0, abs(fd))


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="lam_ratio"):
        GroupSparseSVMHead(lam_ratio=1.5)
    with pytest.raises(ValueError, match="lam2"):
        GroupSparseSVMHead(lam2=-1.0, tau=0.1)
    with pytest.raises(ValueError, match="backward"):
        GroupSparseSVMHead(backward="lu")
    head = GroupSparseSVMHead(lam_ratio=0.1, lam2=1.0)
    query, support, labels = _batch()
    support[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        head(query, support, labels, 3)
    with pytest.raises(ValueError, match="support_labels"):
        head(query, support.nan_to_num(), labels + 5, 3)
