"""Stress episodes for the heads, and the properties every head must keep on them.

Shared by the property-based test (``tests/test_fuzz.py``, Hypothesis draws the episodes) and the
long recorded run (``benchmarks/fuzz_heads.py``, seeded random draws). An episode is described by
an :class:`EpisodeSpec`, so any failure is reproducible from the spec printed with it.

The properties (:func:`check_head`): finite logits of the right shape and dtype, finite gradients
for the support and query features, and for the certified heads a duality gap within tolerance,
recomputed independently in float64, or the documented fallback (``converged`` False, the reached
gap reported, a ``RuntimeWarning``). Features that a low-precision cast turns into Inf are refused
at the head's edge with the NaN/Inf message.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from metasparse.heads import build_head

KINDS = ("gaussian", "relu", "zero", "duplicated", "rank_deficient", "one_feature")
DTYPES = ("float32", "float64", "float16", "bfloat16")
HEADS = ("proto", "ridge", "svm_cs", "group_sparse_svm")
SVM_CS_MAX_VARIABLES = 400  # qpth factorises an (n·K)² matrix per iteration: keep it small


class HeadPropertyError(AssertionError):
    """A head broke a property on an episode; the message carries the spec to reproduce it."""


@dataclass(frozen=True)
class EpisodeSpec:
    """One stress episode: shape, feature distribution and scale, input dtype, λ1/λ_max."""

    way: int
    shot: int
    query: int
    p: int
    scale: float
    kind: str
    dtype: str
    lam_ratio: float
    seed: int


def make_episode(spec: EpisodeSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(query, support, support_labels) of one task, drawn in float64 and cast to the dtype."""
    g = torch.Generator().manual_seed(spec.seed)
    n, m = spec.way * spec.shot, spec.way * spec.query
    total = n + m
    if spec.kind == "zero":
        x = torch.zeros(total, spec.p, dtype=torch.float64)
    elif spec.kind == "rank_deficient":
        rank = 1 + spec.seed % 2
        x = torch.randn(total, rank, generator=g, dtype=torch.float64) @ torch.randn(
            rank, spec.p, generator=g, dtype=torch.float64
        )
    else:
        x = torch.randn(total, spec.p, generator=g, dtype=torch.float64)
        if spec.kind == "relu":
            x = x.clamp_min(0.0)
        elif spec.kind == "duplicated":  # every example of a class is the same point
            labels_all = torch.cat(
                [torch.arange(spec.way).repeat_interleave(k) for k in (spec.shot, spec.query)]
            )
            x = x[labels_all]
        elif spec.kind == "one_feature":
            x[:, 1:] = 0.0
    x = (x * spec.scale).to(getattr(torch, spec.dtype))
    support, query = x[:n].unsqueeze(0), x[n:].unsqueeze(0)
    labels = torch.arange(spec.way).repeat_interleave(spec.shot).unsqueeze(0)
    return query, support, labels


def random_spec(rng: np.random.Generator, max_support: int = 400) -> EpisodeSpec:
    """A seeded random episode over the fuzzed ranges (ways 2–20, shots 1–20, scales 1e-6–1e6)."""
    way = int(rng.integers(2, 21))
    shot = int(rng.integers(1, max(1, min(20, max_support // way)) + 1))
    return EpisodeSpec(
        way=way,
        shot=shot,
        query=int(rng.integers(1, 4)),
        p=int(rng.choice([1, 2, 3, 8, 16, 64, 160])),
        scale=float(10.0 ** rng.uniform(-6, 6)),
        kind=str(rng.choice(KINDS)),
        dtype=str(rng.choice(DTYPES)),
        lam_ratio=float(rng.choice([0.0, 1.0, rng.uniform(0, 1)])),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


FUZZ_MAX_ITER = 500  # the certified head's iteration cap here: the fallback path is what is
# checked on episodes that cannot certify, and it costs max_iter iterations


def head_for(name: str, spec: EpisodeSpec) -> torch.nn.Module:
    """The head under test, with the episode's λ1/λ_max for the group-sparse one."""
    options: dict[str, Any] = {}
    if name == "group_sparse_svm":
        options = {"lam_ratio": spec.lam_ratio, "max_iter": FUZZ_MAX_ITER}
    return build_head(name, **options)


def applicable(name: str, spec: EpisodeSpec) -> bool:
    """qpth's dense interior point is only run where its QP stays small."""
    return name != "svm_cs" or spec.way * spec.shot * spec.way <= SVM_CS_MAX_VARIABLES


def check_head(name: str, spec: EpisodeSpec) -> dict[str, Any]:
    """Run head ``name`` on the episode and check its properties; the outcome as a record
    (``status``: ``ok``, ``certified``, ``fallback`` or ``refused``). Raises
    :class:`HeadPropertyError` when a property fails."""
    query, support, labels = make_episode(spec)
    head = head_for(name, spec)
    start = time.perf_counter()
    record: dict[str, Any] = {"head": name, **asdict(spec)}

    def fail(what: str) -> HeadPropertyError:
        return HeadPropertyError(f"{name} on {spec}: {what}")

    if not (torch.isfinite(support).all() and torch.isfinite(query).all()):
        try:
            head(query, support, labels, spec.way)
        except ValueError as exc:
            if "NaN or Inf" not in str(exc):
                raise fail(f"refused with an unexpected message: {exc}") from exc
            return {**record, "status": "refused", "seconds": time.perf_counter() - start}
        raise fail(f"accepted {spec.dtype} features that overflowed to Inf")
    # gradients are checked where the head sees them: float32 for the half-precision inputs,
    # which the head casts (half-precision gradients are the backbone's, and its GradScaler's)
    solved: list[Any] = []  # the group-sparse head's own solution, certified below
    if name == "group_sparse_svm":
        solve = head.solve

        def recording_solve(*args: Any, **kwargs: Any) -> Any:
            solved.append(solve(*args, **kwargs))
            return solved[-1]

        head.solve = recording_solve
    q = (
        query.float() if query.dtype in (torch.float16, torch.bfloat16) else query
    ).requires_grad_()
    s = (support.float() if q.dtype != query.dtype else support).requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits, stats = head(q, s, labels, spec.way)
        if logits.shape != (1, q.shape[1], spec.way):
            raise fail(f"logits of shape {tuple(logits.shape)}")
        if logits.dtype != q.dtype or not torch.isfinite(logits).all():
            raise fail(f"logits {logits.dtype}, finite: {bool(torch.isfinite(logits).all())}")
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(spec.seed))
        (logits * weights.to(logits.dtype)).sum().backward()
    for tensor, what in ((s, "support"), (q, "query")):
        if tensor.grad is None or not torch.isfinite(tensor.grad).all():
            raise fail(f"non-finite gradient for the {what} features")
    status = "ok"
    if name == "group_sparse_svm":
        status = _check_certificate(head, s.detach(), labels, spec, stats, caught, fail, solved)
    record.update(status=status, seconds=time.perf_counter() - start)
    record["warnings"] = sorted({str(w.message)[:300] for w in caught})
    record.update({k: float(v) for k, v in stats.items() if isinstance(v, int | float)})
    return record


def _check_certificate(
    head: Any,
    support: torch.Tensor,
    labels: torch.Tensor,
    spec: EpisodeSpec,
    stats: dict[str, float],
    caught: list[Any],
    fail: Any,
    solved: list[Any],
) -> str:
    """The gap the head reports bounds the suboptimality of the classifier it used (its
    forward's solution, ``solved``), recomputed here in float64 from the definitions
    (:func:`reference_gap`); within tolerance, or the documented fallback (not converged,
    warned)."""
    if len(solved) != 1:
        raise fail(f"the head solved {len(solved)} times in one forward, not once")
    res = solved[0]
    gap = reference_gap(support, labels, spec.way, res.dual, res.weights, res.lam1, head)
    reached = float(gap.max())
    if not math.isfinite(reached):
        raise fail(f"the recomputed gap is {reached}")
    if bool(res.converged.all()):
        # the solver's own check is this bound up to float64 rounding of P and D
        if reached > head.tol * (1.0 + 1e-6) + 1e-12:
            raise fail(f"certified at {head.tol} but the recomputed gap is {reached:.3g}")
        return "certified"
    if not any(issubclass(w.category, RuntimeWarning) for w in caught):
        raise fail("an episode missed its tolerance without the documented RuntimeWarning")
    if not stats["converged"] < 1.0:
        raise fail("stats say converged while the solve was not")
    return "fallback"


@torch.no_grad()
def reference_gap(
    support: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    dual: torch.Tensor,
    weights: torch.Tensor,
    lam1: torch.Tensor,
    head: Any,
) -> torch.Tensor:
    """``(P(W) + D(α)) / max(1, |P(W)|)`` per task, in float64, written from the definitions
    of ``docs/method.md`` §2 as a test oracle (no code shared with the solver's certificate):
    the primal at the weights the head uses, the dual at its dual point, both at its ``λ1``."""
    X = support.double()
    W = weights.detach().double()
    alpha = dual.detach().double()
    Y = torch.nn.functional.one_hot(labels, n_way).double()
    lam1 = lam1.detach().double()
    c = X @ W.transpose(1, 2) + 1.0 - Y  # s + 1 − e_y
    if head.tau > 0:  # ℓ_τ(s) = max_{a ∈ Δ} ⟨a − e_y, c⟩ − (τ/2)‖a − e_y‖², a = proj(e_y + c/τ)
        a = _simplex(Y + c / head.tau)
        loss = ((a - Y) * c).sum(-1) - 0.5 * head.tau * ((a - Y) ** 2).sum(-1)
    else:
        loss = c.amax(-1) - (c * Y).sum(-1)
    P = (
        loss.sum(-1)
        + lam1 * torch.linalg.vector_norm(W, dim=1).sum(-1)
        + 0.5 * head.lam2 * (W**2).sum((1, 2))
    )
    M = X.transpose(1, 2) @ (Y - alpha)  # (T, p, K)
    shrunk = (torch.linalg.vector_norm(M, dim=-1) - lam1.reshape(-1, 1)).clamp_min(0.0)
    D = (
        (shrunk**2).sum(-1) / (2 * head.lam2)
        + 0.5 * head.tau * ((alpha - Y) ** 2).sum((1, 2))
        - (alpha * (1.0 - Y)).sum((1, 2))
    )
    return (P + D) / P.abs().clamp_min(1.0)


def _simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the probability simplex (sort-based)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp_min(0.0)
