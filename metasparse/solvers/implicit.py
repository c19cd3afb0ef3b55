"""Implicit differentiation of solver outputs: the ONE place where metasparse owns the autograd
boundary between an inner solver and the outer (meta-)gradient.

Every inner problem in metasparse (the group-sparse SVM head, the bi-level group-Lasso of the
synthetic experiments) is solved by an iterative solver that runs on *detached* tensors. Its
solution ``z*`` is then re-attached to the graph here, with exact gradients obtained from the
implicit function theorem applied to an optimality condition ``F(z*, θ) = 0``::

    dz*/dθ = −(∂_z F)^{-1} ∂_θ F      ⇒      θ̄ = −(∂_θ F)ᵀ u,   (∂_z F)ᵀ u = z̄

The iterations are never unrolled. Two entry points:

* :func:`implicit_root` (generic, in the spirit of jaxopt/torchopt ``custom_root``): give it
  ``optimality_fn(z, *params) -> F`` (same shape as ``z``, tasks along dim 0 and independent),
  the detached root and the parameters; it returns the root attached to the graph. Typical
  ``F`` for a composite problem ``min_z f(z, θ) + g(z)`` is the proximal-gradient fixed point
  ``F(z, θ) = z − prox_{ηg}(z − η ∇_z f(z, θ))``; for a smooth problem, ``F = ∇_z f``.
  The linear system ``(∂_z F)ᵀ u = z̄`` is solved per task by a dense solve (Jacobian rows from
  batched vector-Jacobian products; best for up to a few hundred free coordinates) or matrix-free
  by batched CG (symmetric ``∂_z F``, e.g. ``F = ∇f``) or GMRES (any ``F``). An optional
  ``active`` mask restricts the system to the free coordinates (e.g. the nonzero groups of a
  group-Lasso): inactive coordinates must be *pinned* at the root, i.e. locally
  ``F_i(z, θ) = z_i − const`` (true for the prox-gradient map at a zero group whose gradient is
  strictly inside the threshold); their gradient is then exactly zero.
  :func:`custom_root` is the decorator form.

* :func:`svm_dual_root` (specialized): the KKT system of the group-sparse Crammer–Singer dual of
  :mod:`metasparse.solvers.group_sparse_svm`, solved in closed form on the active simplex faces
  and active features. Tests check that it agrees with the generic path.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from metasparse.solvers import products

OptimalityFn = Callable[..., Tensor]
_SOLVES = ("dense", "cg", "gmres")
# Relative residual of the SVM backward's CG. float32: 1e-5 changes the gradient by ≤ 4e-5
# (relative), below the error that the forward's certified gap of 1e-5 itself leaves in it
# (7e-5 to 5e-2, measured on the 15-shot benchmark problems); float64 stays tight for
# derivative checks.
CG_TOL = {torch.float64: 1e-11, torch.float32: 1e-5}
# Sparse solutions (at most DIRECT_ACTIVE of the features active) with faces of at most
# DIRECT_FACE coordinates (max over the batch) are solved directly, by one dense s × s system
# built in feature chunks, instead of by CG, whose step count grows with sparsity. Backward
# time direct / CG, 8 episodes of 5-way (benchmarks/head_speed.md, item 9): at λ1/λ_max = 0.5
# (6-21% of features active) 0.70 / 0.84 (1-shot, p = 2560 / 16000) and 0.89-0.90 (5-shot,
# p = 1600 / 2560 / 16000), but 1.6 at 15-shot p = 2560 (s up to 375); with 55-100% of the
# features active it loses (0.97-3.5).
DIRECT_FACE = 128
DIRECT_ACTIVE = 0.25


# --------------------------------------------------------------------------------------------
# Batched linear solves with the transposed Jacobian (Jᵀ u = g), one system per task.
# --------------------------------------------------------------------------------------------


def _vjp_factory(F: Tensor, z: Tensor) -> Callable[[Tensor], Tensor]:
    """Return ``u ↦ (∂_z F)ᵀ u`` for the graph ``F(z)`` (batched over tasks, block-diagonal)."""

    def vjp(u: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(F, z, grad_outputs=u, retain_graph=True)
        return g

    return vjp


def _dense_solve(
    F: Tensor, z: Tensor, g: Tensor, active: Tensor | None, solve_dtype: torch.dtype
) -> Tensor:
    """Solve ``J_AAᵀ u_A = g_A`` per task by forming ``J`` rows on the active set (one vjp each)."""
    T = z.shape[0]
    m = z[0].numel()
    mask = (
        torch.ones(T, m, dtype=torch.bool, device=z.device)
        if active is None
        else active.reshape(T, m)
    )
    counts = mask.sum(1)
    ma = int(counts.max()) if T else 0
    u = torch.zeros_like(g).reshape(T, m)
    if ma == 0:
        return u.reshape(g.shape)
    # Padded index list of active coordinates per task (padding repeats index 0, masked later).
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    idx = order[:, :ma]  # (T, ma)
    valid = torch.arange(ma, device=z.device)[None, :] < counts[:, None]  # (T, ma)
    # Cotangents: for slot k, e_{idx[t,k]} in task t (zero where padded).
    E = torch.zeros(ma, T, m, dtype=z.dtype, device=z.device)
    E.scatter_(2, idx.T.unsqueeze(-1), valid.T.unsqueeze(-1).to(z.dtype))
    E = E.reshape(ma, *z.shape)
    try:
        (rows,) = torch.autograd.grad(
            F, z, grad_outputs=E, retain_graph=True, is_grads_batched=True
        )
    except RuntimeError:  # an op without a batching rule: fall back to a loop of vjps
        vjp = _vjp_factory(F, z)
        rows = torch.stack([vjp(E[k]) for k in range(ma)])
    rows = rows.reshape(ma, T, m).permute(1, 0, 2)  # rows[t, k, :] = J_t[idx[t,k], :]
    J = torch.gather(rows, 2, idx.unsqueeze(1).expand(T, ma, ma))  # J_AA (T, ma, ma)
    eye = torch.eye(ma, dtype=J.dtype, device=J.device).expand(T, ma, ma)
    pad = ~(valid.unsqueeze(2) & valid.unsqueeze(1))
    J = torch.where(pad, eye, J)
    rhs = torch.gather(g.reshape(T, m), 1, idx) * valid
    sol = _solve_per_task(J.transpose(1, 2).to(solve_dtype), rhs.to(solve_dtype))
    sol = sol.to(g.dtype) * valid
    u.scatter_add_(1, idx, sol)
    return u.reshape(g.shape)


def _solve_per_task(A: Tensor, b: Tensor) -> Tensor:
    """``A_t x_t = b_t`` for every task (A (T, m, m), b (T, m)), one LU factorisation at a time
    on the CPU: the batched CPU LU can return invalid pivots after ``torch.set_num_threads(n >
    1)`` (a PyTorch bug; qpth trips on it at 5-way 15-shot). On other devices, batched."""
    if A.device.type != "cpu":
        return torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
    return torch.stack([torch.linalg.solve(A[t], b[t]) for t in range(A.shape[0])])


def _bdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-task inner product of two (tasks, ...) tensors."""
    return (a * b).reshape(a.shape[0], -1).sum(1)


def _bshape(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a (tasks,) vector to broadcast against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _pcg(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    tol: float,
    maxiter: int,
    precond: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, float]:
    """Batched (preconditioned) CG for symmetric positive-definite systems, one per task of
    the (T, ...) ``b``, to relative residual ``tol``. Returns ``x`` and the largest relative
    residual reached (above ``tol`` when ``maxiter`` steps did not suffice: callers warn).

    Every task keeps stepping until all have converged (extra accuracy for the early ones,
    no masks). A task whose curvature ``⟨p, A p⟩`` or ``⟨r, M⁻¹ r⟩`` is no longer positive
    stops where it is: that happens when ``b`` is round-off, e.g. the gradient of a loss that
    depends on the SVM weights only through ``Σ_k W_k`` (identically 0), where going on
    overflowed to NaN."""
    T = b.shape[0]
    # x₀ = 0: the first step then takes the best multiple of precond(b), at no product
    # (x₀ = precond(b) would cost one for a worse start)
    x = torch.zeros_like(b)
    r = b
    z = r if precond is None else precond(r)
    p = z
    rz = _bdot(r, z)
    bn = b.reshape(T, -1).norm(dim=-1).clamp_min(1e-300)
    stopped = torch.zeros(T, dtype=torch.bool, device=b.device)
    for _ in range(maxiter):
        go = (r.reshape(T, -1).norm(dim=-1) > tol * bn) & ~stopped
        if not bool(go.any()):
            return x, 0.0
        Ap = matvec(p)
        pAp = _bdot(p, Ap)
        ok = ~stopped & (pAp > 0) & (rz > 0)
        stopped |= ~ok
        step = _bshape(torch.where(ok, rz / pAp.clamp_min(1e-300), 0.0), b)
        x = x + step * p
        r = r - step * Ap
        z = r if precond is None else precond(r)
        rz_new = _bdot(r, z)
        p = z + _bshape(torch.where(ok, rz_new / rz.clamp_min(1e-300), 0.0), b) * p
        rz = rz_new
    res = r.reshape(T, -1).norm(dim=-1) / bn
    return x, float(res[~stopped].max()) if bool((~stopped).any()) else 0.0


def _warn_unconverged(what: str, maxiter: int, res: float, tol: float, advice: str) -> None:
    """Warn, at the caller of the function that calls this, that an iterative solve for a
    gradient ran out of steps."""
    warnings.warn(
        f"{what} stopped after {maxiter} steps at relative residual {res:.1e} > {tol:.0e}; "
        f"the gradient is approximate ({advice})",
        RuntimeWarning,
        stacklevel=3,
    )


def _gmres(
    matvec: Callable[[Tensor], Tensor], b: Tensor, tol: float, maxiter: int, restart: int
) -> tuple[Tensor, float]:
    """Batched restarted GMRES (one Krylov basis per task, least squares on the Hessenberg).
    Returns ``x`` and the largest relative residual (0 when every task reached ``tol``)."""
    T = b.shape[0]
    shape = b.shape
    x = torch.zeros_like(b)
    bnorm = _bdot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
    total = 0
    while total < maxiter:
        r = b - matvec(x)
        beta = _bdot(r, r).sqrt()
        if bool((beta <= tol * bnorm).all()):
            return x, 0.0
        k_max = min(restart, maxiter - total)
        V = [r / _bshape(beta.clamp_min(torch.finfo(b.dtype).tiny), r)]
        H = torch.zeros(T, k_max + 1, k_max, dtype=b.dtype, device=b.device)
        k_used = 0
        for k in range(k_max):
            w = matvec(V[k])
            for i in range(k + 1):  # modified Gram–Schmidt
                h = _bdot(w, V[i])
                H[:, i, k] = h
                w = w - _bshape(h, w) * V[i]
            hn = _bdot(w, w).sqrt()
            H[:, k + 1, k] = hn
            V.append(w / _bshape(hn.clamp_min(torch.finfo(b.dtype).tiny), w))
            k_used = k + 1
            total += 1
            if bool((hn <= tol * bnorm).all()):
                break
        e1 = torch.zeros(T, k_used + 1, 1, dtype=b.dtype, device=b.device)
        e1[:, 0, 0] = beta
        y = torch.linalg.lstsq(H[:, : k_used + 1, :k_used], e1).solution.squeeze(-1)
        Vm = torch.stack(V[:k_used], dim=1).reshape(T, k_used, -1)
        x = x + (y.unsqueeze(1) @ Vm).reshape(shape)
    r = b - matvec(x)  # out of steps: one more product for the residual it reached
    res = float((_bdot(r, r).sqrt() / bnorm).max())
    return x, 0.0 if res <= tol else res


def solve_transposed(
    F: Tensor,
    z: Tensor,
    g: Tensor,
    *,
    active: Tensor | None = None,
    solve: str = "dense",
    tol: float = 1e-10,
    maxiter: int = 500,
    restart: int = 50,
) -> Tensor:
    """Solve ``(∂_z F)ᵀ u = g`` per task for a graph ``F(z)`` built with ``z.requires_grad``.

    Restricted to ``active`` coordinates when given (``u`` is zero elsewhere). ``solve`` is
    ``"dense"`` (exact, float64 internally), ``"cg"`` (needs symmetric ``∂_z F``) or ``"gmres"``.
    """
    if solve not in _SOLVES:
        raise ValueError(f"solve must be one of {_SOLVES}, got {solve!r}")
    if solve == "dense":
        return _dense_solve(F, z, g, active, torch.float64)
    vjp = _vjp_factory(F, z)
    if active is None:
        matvec = vjp
        rhs = g
    else:
        am = active.to(g.dtype)

        def matvec(u: Tensor) -> Tensor:
            return vjp(u * am) * am + u * (1 - am)

        rhs = g * am
    if solve == "cg":
        u, res = _pcg(matvec, rhs, tol, maxiter)
    else:
        u, res = _gmres(matvec, rhs, tol, maxiter, restart)
    if res > tol:
        advice = "raise maxiter, or use solve='dense'"
        _warn_unconverged(f"implicit differentiation: {solve}", maxiter, res, tol, advice)
    return u if active is None else u * active.to(u.dtype)


# --------------------------------------------------------------------------------------------
# Generic custom-root boundary.
# --------------------------------------------------------------------------------------------


class _ImplicitRoot(torch.autograd.Function):
    """Identity on ``z*`` in the forward pass; implicit-function-theorem VJP in the backward."""

    @staticmethod
    def forward(ctx: Any, z_star: Tensor, config: dict[str, Any], *params: Tensor) -> Tensor:
        ctx.config = config
        ctx.save_for_backward(z_star, *params)
        return z_star.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor | None, ...]:
        z_star, *params = ctx.saved_tensors
        cfg = ctx.config
        needs = ctx.needs_input_grad[2:]
        with torch.enable_grad():
            z = z_star.detach().requires_grad_(True)
            ps = [
                p.detach().requires_grad_(bool(n) and p.is_floating_point())
                for p, n in zip(params, needs, strict=True)
            ]
            F = cfg["optimality_fn"](z, *ps)
            if F.shape != z.shape:
                raise ValueError(
                    f"optimality_fn must return a tensor shaped like z {tuple(z.shape)}, got "
                    f"{tuple(F.shape)}"
                )
            u = solve_transposed(
                F,
                z,
                grad_z,
                active=cfg["active"],
                solve=cfg["solve"],
                tol=cfg["tol"],
                maxiter=cfg["maxiter"],
                restart=cfg["restart"],
            )
            wanted = [p for p in ps if p.requires_grad]
            grads_w = (
                torch.autograd.grad(F, wanted, grad_outputs=-u, allow_unused=True) if wanted else ()
            )
        it = iter(grads_w)
        grads = [next(it) if p.requires_grad else None for p in ps]
        grads = [
            torch.zeros_like(p) if (g is None and p.requires_grad) else g
            for g, p in zip(grads, ps, strict=True)
        ]
        return (None, None, *grads)


def implicit_root(
    optimality_fn: OptimalityFn,
    z_star: Tensor,
    params: Sequence[Tensor],
    *,
    active: Tensor | None = None,
    solve: str = "dense",
    tol: float = 1e-10,
    maxiter: int = 500,
    restart: int = 50,
) -> Tensor:
    """Attach a detached root ``z_star`` of ``optimality_fn(z, *params) = 0`` to the graph.

    Args:
        optimality_fn: ``F(z, *params) -> Tensor`` shaped like ``z``; tasks along dim 0 must not
            interact (the Jacobian is block-diagonal over tasks). Must be differentiable by
            autograd in ``z`` and in the params that need gradients.
        z_star: the solution, shape (tasks, ...); it is detached here.
        params: tensors ``θ`` to differentiate through (those without ``requires_grad`` get none).
        active: optional bool mask shaped like ``z``; the system is solved on these coordinates
            only, the others are treated as pinned (zero gradient). See the module docstring.
        solve: ``"dense"`` (default; exact, float64), ``"cg"`` (symmetric ``∂_z F`` only) or
            ``"gmres"``; ``tol``/``maxiter``/``restart`` configure the iterative ones.

    Returns:
        ``z_star`` (same values) whose gradient w.r.t. ``params`` is the implicit one.
    """
    if solve not in _SOLVES:
        raise ValueError(f"solve must be one of {_SOLVES}, got {solve!r}")
    if active is not None and active.shape != z_star.shape:
        raise ValueError(
            f"active mask must have the shape of z_star {tuple(z_star.shape)}, "
            f"got {tuple(active.shape)}"
        )
    config = {
        "optimality_fn": optimality_fn,
        "active": None if active is None else active.detach().bool(),
        "solve": solve,
        "tol": tol,
        "maxiter": maxiter,
        "restart": restart,
    }
    return _ImplicitRoot.apply(z_star.detach(), config, *params)


def custom_root(
    optimality_fn: OptimalityFn,
    *,
    solve: str = "dense",
    active_fn: Callable[..., Tensor] | None = None,
    tol: float = 1e-10,
    maxiter: int = 500,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: make ``solver(*params) -> z*`` differentiable through ``optimality_fn``.

    The wrapped solver runs under ``torch.no_grad()`` on the given params; ``active_fn(z*,
    *params)`` (optional) returns the active-coordinate mask. Example (group Lasso)::

        @custom_root(lambda W, X, Y: W - prox(W - eta * grad(W, X, Y)), active_fn=nonzero_rows)
        def fit(X, Y): ...
    """

    def decorator(solver: Callable[..., Tensor]) -> Callable[..., Tensor]:
        @functools.wraps(solver)
        def wrapped(*params: Tensor) -> Tensor:
            with torch.no_grad():
                z = solver(*[p.detach() for p in params])
                active = None if active_fn is None else active_fn(z, *params)
            return implicit_root(
                optimality_fn, z, params, active=active, solve=solve, tol=tol, maxiter=maxiter
            )

        return wrapped

    return decorator


# --------------------------------------------------------------------------------------------
# Specialized boundary: the group-sparse Crammer–Singer dual (metasparse.solvers.group_sparse_svm).
# --------------------------------------------------------------------------------------------


def _spd_solve(A: Tensor, b: Tensor) -> Tensor:
    """Batched SPD solve (Cholesky, no LU pivots); tasks whose matrix is singular get the
    minimum-norm solution via an eigendecomposition."""
    L, info = torch.linalg.cholesky_ex(A)
    x = torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        evals, evecs = torch.linalg.eigh(A[bad])
        cut = evals.abs().amax(-1, keepdim=True) * A.shape[-1] * torch.finfo(A.dtype).eps
        inv = torch.where(evals.abs() > cut, 1.0 / evals, torch.zeros_like(evals))
        proj = (evecs.transpose(1, 2) @ b[bad].unsqueeze(-1)).squeeze(-1)
        x[bad] = (evecs @ (inv * proj).unsqueeze(-1)).squeeze(-1)
    return x


def _padded_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Indices of True entries per row of a (T, m) mask, padded to the max count, and validity."""
    counts = mask.sum(1)
    width = max(int(counts.max()) if mask.shape[0] else 0, 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return order, valid


def _face(alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float) -> Tensor:
    """Free coordinates of ``α`` (see :func:`_face_from_gradient`)."""
    from metasparse.solvers.group_sparse_svm import dual_gradient

    return _face_from_gradient(alpha, dual_gradient(alpha, X, Y, lam1, lam2, tau))


def _face_from_gradient(alpha: Tensor, g: Tensor) -> Tensor:
    """Free coordinates of ``α`` given ``∇D(α)``: positive, except round-off positives (~1e-17
    left by the simplex projection) whose gradient exceeds the example's multiplier, i.e.
    clearly at 0."""
    mu = (alpha * g).sum(-1, keepdim=True)
    return (alpha > 0) & (alpha >= 1e-9 * (g - mu).clamp_min(0.0))


def _use_cg_backward(solve: str, tau: float, n: int, K: int, p: int) -> bool:
    """Whether the SVM backward runs matrix-free CG (``"cg"``, or ``"auto"`` beyond tiny
    episodes ``n·K·p > 2e4``) rather than the dense system; never at τ = 0, where the system
    may be singular and only the dense min-norm solve is right."""
    if solve not in ("auto", "dense", "cg"):
        raise ValueError(f"backward solve must be 'auto', 'dense' or 'cg', got {solve!r}")
    return tau > 0 and (solve == "cg" or (solve == "auto" and n * K * p > 2e4))


def _svm_structure(
    alpha: Tensor,
    X: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    face: Tensor | None = None,
    Mt: Tensor | None = None,
) -> dict[str, Any]:
    """Face coordinates (padded; default ``α > 0``) at ``α``, the projection onto their
    tangent space, and what :func:`_dense_matrix` needs to build the Hessian on them
    (``Mt = (Y − α)ᵀX``, (T, K, p), when the caller has it)."""
    T, n, K = Y.shape
    if face is None:
        face = _face(alpha, X, Y, lam1, lam2, tau)
    sidx, svalid = _padded_index(face.reshape(T, n * K))
    i_s, k_s = sidx // K, sidx % K
    s = sidx.shape[1]
    eye = torch.eye(s, dtype=torch.float64, device=X.device).expand(T, s, s)
    pair = svalid.unsqueeze(2) & svalid.unsqueeze(1)
    same_i = (i_s.unsqueeze(2) == i_s.unsqueeze(1)) & pair
    size = same_i.sum(-1, keepdim=True).clamp_min(1).double()
    Pm = torch.where(pair, eye - same_i.double() / size, torch.zeros_like(eye))
    # E[t, s, i] = 1 when slot s belongs to example i: P·A = A − E diag(1/|S_i|) Eᵀ A (cheap)
    E = torch.nn.functional.one_hot(i_s, n).double() * svalid.unsqueeze(-1)
    inv = 1.0 / E.sum(1).clamp_min(1.0)  # (T, n)
    return {
        "E": E,
        "inv": inv,
        "Pm": Pm,
        "eye": eye,
        "sidx": sidx,
        "svalid": svalid,
        "i_s": i_s,
        "k_s": k_s,
        "X": X,
        "Mt": products.left((Y - alpha).to(X.dtype).transpose(1, 2), X) if Mt is None else Mt,
        "lam1": lam1,
        "tau": float(tau),
    }


def svm_dual_system(
    alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float
) -> tuple[Tensor, Tensor, Tensor]:
    """KKT matrix of the SVM dual on its active faces × active features (float64).

    Returns ``(A, idx, valid)``: ``A`` (T, s, s) is ``P H P + (I − P)`` on the coordinates
    ``idx`` (T, s) of the flattened ``α`` (n·K) with ``α > 0``, where ``H = τI + Σ_{j active}
    x_j x_jᵀ ⊗ J_j / λ2`` is the dual Hessian (``J_j = (1 − c_j) I + c_j v̂_j v̂_jᵀ``,
    ``c_j = λ1/‖M_j‖``, ``v̂_j = M_j/‖M_j‖``) and ``P`` centres each example's free coordinates
    (the tangent space of its simplex face). Padding slots are identity rows.
    """
    st = _svm_structure(alpha, X, Y, lam1, lam2, tau)
    return _dense_matrix(st, lam2), st["sidx"], st["svalid"]


def _dense_matrix(st: dict[str, Any], lam2: float) -> Tensor:
    """``P H P + (I − P)`` formed explicitly (cost s²·a per task, in feature chunks)."""
    from metasparse.solvers.group_sparse_svm import _dual_hessian, _Rows, column_norms

    X, Mt = st["X"], st["Mt"]
    slots = (st["i_s"], st["k_s"])
    H = _dual_hessian(
        _Rows(X), Mt, column_norms(Mt), st["lam1"], lam2, st["tau"], slots=slots, dtype=X.dtype
    )
    return _project_matrix(st, H)


def _project_matrix(st: dict[str, Any], H: Tensor) -> Tensor:
    """``P H P + (I − P)`` using the example-membership matrix (s²·n instead of s³ per task)."""
    E, inv, Pm = st["E"], st["inv"], st["Pm"]
    R = H - E @ (inv.unsqueeze(-1) * (E.transpose(1, 2) @ H))
    R = R - ((R @ E) * inv.unsqueeze(1)) @ E.transpose(1, 2)
    valid = st["svalid"].double()
    R = R * valid.unsqueeze(2) * valid.unsqueeze(1)
    return R + (st["eye"] - Pm)


def _weighted_gram(X: Tensor, w: Tensor, chunk: int = 2048) -> Tensor:
    """``X diag(w) Xᵀ`` per task, in feature chunks through one reused buffer: a (T, n, p)
    temporary of ``X * w`` costs more than the product itself at p = 16000 (page faults)."""
    if X.shape[2] <= 2 * chunk:
        return (X * w.unsqueeze(1)) @ X.transpose(1, 2)
    G = torch.zeros(X.shape[0], X.shape[1], X.shape[1], dtype=X.dtype, device=X.device)
    buf = X.new_empty(X.shape[0], X.shape[1], chunk)
    for a in range(0, X.shape[2], chunk):
        Xc = X[:, :, a : a + chunk]
        Xw = torch.mul(Xc, w[:, None, a : a + chunk], out=buf[:, :, : Xc.shape[2]])
        G.baddbmm_(Xw, Xc.transpose(1, 2))
    return G


def _gram_from_forward(
    X: Tensor, omega: Tensor, gram: tuple[Tensor, Tensor | None], limit: int
) -> Tensor | None:
    """``X diag(ω) Xᵀ`` (float64) as the forward's ``G_S = X_S X_Sᵀ`` plus a gathered update
    on the features whose weight differs from their weight in ``G_S`` (inactive ones in ``S``,
    those near the threshold, active ones outside ``S``), when those are fewer than
    ``limit``; otherwise ``None`` (the update would cost more than it saves: the backward
    then preconditions with ``G_S`` as it is)."""
    G, mask = gram
    base = torch.ones_like(omega) if mask is None else mask.to(omega.dtype)
    e = omega - base
    diff = e != 0
    m = int(diff.sum(1).max())
    if m >= limit:
        return None
    if m == 0:
        return G
    idx, valid = _padded_index(diff)
    Xe = X.gather(2, idx.unsqueeze(1).expand(-1, X.shape[1], -1)).mul_(valid.unsqueeze(1))
    return G + _weighted_gram(Xe, e.gather(1, idx) * valid).double()


def _direct_face_solve(
    alpha: Tensor,
    X: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    face: Tensor,
    Mt: Tensor,
    b: Tensor,
) -> Tensor:
    """``x`` (T, n, K) with ``(P H P + I − P) x = b`` by one dense solve on the face
    coordinates (``b`` float64, already projected: zero off the face), the system CG solves
    otherwise."""
    st = _svm_structure(alpha, X, Y, lam1, lam2, tau, face=face.bool(), Mt=Mt)
    return _solve_on_face(st, lam2, b)


def _solve_on_face(st: dict[str, Any], lam2: float, rhs: Tensor, project: bool = False) -> Tensor:
    """``x`` (T, n, K), float64, zero off the face slots of ``st``, with ``(P H P + I − P) x =
    rhs`` on them: the dense solve shared by the τ = 0 backward and the direct face solve.
    ``project``: project ``rhs`` onto the faces' tangent space first."""
    T, n, K = rhs.shape
    sidx, svalid = st["sidx"], st["svalid"]
    r = rhs.reshape(T, n * K).gather(1, sidx).double() * svalid
    if project:
        r = (st["Pm"] @ r.unsqueeze(-1)).squeeze(-1)
    u_s = _spd_solve(_dense_matrix(st, lam2), r)
    x = torch.zeros(T, n * K, dtype=torch.float64, device=rhs.device)
    return x.scatter_add_(1, sidx, u_s * svalid).reshape(T, n, K)


def _face_preconditioner(Gw: Tensor, m: Tensor, tau: float) -> Callable[[Tensor], Tensor]:
    """The exact inverse of ``P (G_w ⊗ I + τ I) P`` on the faces ``m`` (T, n, K), for ``G_w``
    (T, n, n) already divided by λ2.

    Without the coupling between classes, the matrix restricted to the free coordinates is
    block-diagonal over classes (one n×n block per class, masked); the per-example sum
    constraints are imposed through an n×n Schur complement. Cost: K + 1 small Cholesky
    factorisations per task.
    """
    mk = m.transpose(1, 2)  # (T, K, n)
    Hk = Gw.unsqueeze(1) * (mk.unsqueeze(-1) * mk.unsqueeze(-2))
    Hk = Hk + torch.diag_embed(tau * mk + (1.0 - mk))
    Lk, info = torch.linalg.cholesky_ex(Hk)
    if bool((info > 0).any()):  # round-off made a block indefinite (τ ≈ 0): a tiny jitter
        jit = 1e-10 * Hk.diagonal(dim1=-2, dim2=-1).amax(-1) + 1e-300
        Lk, _ = torch.linalg.cholesky_ex(Hk + torch.diag_embed(jit.unsqueeze(-1).expand_as(mk)))
    Hinv = torch.cholesky_inverse(Lk) * (mk.unsqueeze(-1) * mk.unsqueeze(-2))  # (T, K, n, n)
    Lc, _ = torch.linalg.cholesky_ex(Hinv.sum(1))  # every example has a free class: SPD

    # the T·K products with the symmetric n×n blocks as broadcast multiply-and-sum: a batched
    # matrix-vector bmm runs one small GEMV call per block (0.40 against 0.16 ms at 8 tasks,
    # 5-way 15-shot)
    def precond(v: Tensor) -> Tensor:
        vk = v.transpose(1, 2).unsqueeze(-2)  # (T, K, 1, n)
        mu = torch.cholesky_solve((Hinv * vk).sum((1, 3)).unsqueeze(-1), Lc)  # Σ_k z_ik = 0
        return (Hinv * (vk - mu.transpose(1, 2).unsqueeze(1))).sum(-1).transpose(1, 2)

    return precond


def _svm_backward_cg(
    alpha: Tensor,
    X: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    grad_alpha: Tensor | None,
    grad_weights: Tensor | None = None,
    maxiter: int = 200,
    Mt: Tensor | None = None,
    gram: tuple[Tensor, Tensor | None] | None = None,
    want_lam1: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``X̄ = −(∂_X ∇D)ᵀ u`` with ``(P H P + I − P) u = P ᾱ``, matrix-free (τ > 0).

    With ``want_lam1`` it returns ``(X̄, λ̄1)`` as well: ``∇D`` depends on ``λ1`` only through
    ``BST(M_j, λ1)``, whose derivative is ``−v̂_j`` on active features, so
    ``λ̄1 = −Σ_j ⟨v̂_j, (Xᵀu)_j⟩ (− Σ_j ⟨v̂_j, W̄_j⟩/λ2 for the weights' direct path)``, from
    products the backward computes anyway.

    With ``grad_weights`` (``W̄`` for ``W = BST(Xᵀ(Y − α))/λ2``, (T, K, p)), the direct path
    of the weights is folded in: ``M̄ = J W̄/λ2`` adds ``−X M̄ᵀ`` to ``ᾱ`` and ``(Y − α) M̄`` to
    ``X̄``, so that one (n × p) gradient is written instead of two plus a sum.

    Everything stays in the (n, K) layout with ``P`` applied as a per-example centring on the
    face mask, so nothing of size ``s × a`` is gathered. Hessian products cost two passes over
    ``X`` in its own dtype (``Uᵀ X`` then ``X Jᵀ``). PCG is preconditioned by the exact inverse
    of the same system with the group norm's curvature made isotropic per feature, built from
    one weighted Gram matrix (see below; with ``gram``, the forward's ``(X_S X_Sᵀ, S)``, no pass
    over ``X``: it is updated where few weights differ, used as it is otherwise, which weighs
    the features of ``S`` 1 whether active or not). The final ``X̄`` is closed form:
    ``(u Bᵀ + (Y − α) J[Xᵀu]ᵀ)/λ2``.
    """
    from metasparse.solvers.group_sparse_svm import _gradient_from_scores, column_norms

    T = Y.shape[0]
    dt = X.dtype
    f64 = torch.float64
    R = (Y - alpha).to(dt)
    if Mt is None:
        Mt = products.left(R.transpose(1, 2), X)  # (T, K, p)
    safe = column_norms(Mt)  # (T, p), floored at tiny
    lam = lam1.to(dt).unsqueeze(-1)
    act = safe > lam
    p_full = X.shape[2]
    n_act = int(act.sum(1).max())
    c = torch.where(act, lam / safe, torch.zeros_like(safe))  # λ1/‖M_j‖ on active features
    # preconditioner curvature per feature: 1 on active features (the top of the Hessian's own
    # range [1 − c_j, 1]), 0 elsewhere (or 1 in the forward's set S, see below). 15-shot, 5-way,
    # p = 2560 / 16000, λ1/λ_max = 0.01 … 0.5: as many CG products as with the midpoint
    # 1 − c_j/2 (which needs a full weighted Gram), but for one more at 0.01 / p = 16000 and
    # at 0.1 / p = 2560
    omega = act.to(dt)
    gathered = n_act <= 0.6 * p_full
    X_all, omega_all = X, omega  # for the preconditioner's Gram (from the forward's)
    idx = None
    if gathered:  # sparse solution: work on active features only
        idx, valid = _padded_index(act)  # padding slots point at distinct inactive features
        X = X.gather(2, idx.unsqueeze(1).expand(-1, X.shape[1], -1)) * valid.unsqueeze(1)
        Mt = Mt.gather(2, idx.unsqueeze(1).expand(-1, Mt.shape[1], -1))
        safe, act = safe.gather(1, idx), valid
        c, omega = c.gather(1, idx) * valid, omega.gather(1, idx) * valid
        if grad_weights is not None:
            grad_weights = grad_weights.gather(2, idx.unsqueeze(1).expand(-1, Mt.shape[1], -1))
    w = torch.where(act, 1.0 - c, torch.zeros_like(safe))  # tangential curvature
    Vh = Mt / safe.unsqueeze(1)
    Bt = Mt * w.unsqueeze(1)  # BST(M)ᵀ (T, K, p)
    cVh = c.unsqueeze(1) * Vh  # c = w = 0 on inactive features: no mask needed below

    def jac(Q: Tensor, f: slice = slice(None)) -> Tensor:
        """The per-feature Jacobian of BST, ``(1 − c) I + c v̂v̂ᵀ`` on active features, applied
        to ``Q`` (T, K, |f|) on the features ``f``."""
        V = Vh[:, :, f]
        return torch.addcmul(w[:, None, f] * Q, cVh[:, :, f], (V * Q).sum(1, keepdim=True))

    # the weights' direct path: M̄ = J W̄/λ2 (its pass over X is shared with the face's below)
    Mbar = None if grad_weights is None else jac(grad_weights.to(dt)) / lam2
    K = Bt.shape[1]
    XB = products.right(X, Bt if Mbar is None else torch.cat([Bt, Mbar], 1))
    grad = _gradient_from_scores(XB[..., :K].to(f64) / lam2, alpha, Y, tau)  # ∇D(α)
    m = _face_from_gradient(alpha.to(f64), grad).to(f64)  # (T, n, K)
    size = m.sum(-1, keepdim=True).clamp_min(1.0)

    def proj(z: Tensor) -> Tensor:
        z = z * m
        return z - m * z.sum(-1, keepdim=True) / size

    def hess(U: Tensor) -> Tensor:  # X J[Xᵀ U] /λ2 + τ U: both passes chunk by chunk
        return products.left_then_right(X, U.to(dt).transpose(1, 2), jac).to(f64) / lam2 + tau * U

    def matvec(v: Tensor) -> Tensor:
        pv = proj(v)
        return proj(hess(pv)) + v - pv

    if grad_alpha is None:
        grad_alpha = torch.zeros_like(alpha, dtype=f64)
    if Mbar is not None:
        grad_alpha = grad_alpha.to(f64) - XB[..., K:].to(f64)
    b = proj(grad_alpha.to(f64))
    if n_act <= DIRECT_ACTIVE * p_full and int(m.sum((1, 2)).max()) <= DIRECT_FACE:
        # sparse solution, small face: one dense solve costs less than the CG steps and their
        # preconditioner (see DIRECT_FACE)
        x = _direct_face_solve(alpha, X, Y, lam1, lam2, tau, m, Mt, b)
    else:
        if gram is None:
            Gw = _weighted_gram(X, omega)
        else:
            # the forward's Gram, updated on the features whose weight differs when they are
            # few; with more, as it is (it weighs them 1 instead of 0). 15-shot, 5-way, 8
            # episodes, λ1/λ_max = 0.1-0.3: CG products the same or one more (p = 16000, 0.1:
            # 6 instead of 5), while the update (4000 features there) cost two products
            limit = (n_act if gathered else p_full) // 16
            Gw = _gram_from_forward(X_all, omega_all, gram, limit)
            Gw = gram[0] if Gw is None else Gw
        precond = _face_preconditioner(Gw.to(f64) / lam2, m, tau)
        tol = CG_TOL.get(dt, 1e-6)
        x, res = _pcg(matvec, b, tol, maxiter, precond)
        if res > tol:
            advice = f"tau = {tau:g} near 0 makes the implicit system ill-conditioned: raise tau"
            _warn_unconverged("group-sparse SVM backward: CG", maxiter, res, tol, advice)
    u = proj(x).to(dt) / lam2
    UX = products.left(u.transpose(1, 2), X)  # (Xᵀu)ᵀ
    glam = None
    if want_lam1:
        lin = UX if grad_weights is None else UX + grad_weights.to(dt) / lam2
        glam = -((Vh * lin).sum(1) * act).sum(-1)
    JQ = jac(UX)  # J[Xᵀu]/λ2
    if Mbar is not None:
        JQ = JQ + Mbar
    gX = torch.cat([u, R], -1) @ torch.cat([Bt, JQ], 1)  # one (n × p) output
    if idx is not None:
        full = torch.zeros(T, gX.shape[1], p_full, dtype=dt, device=X.device)
        gX = full.scatter_(2, idx.unsqueeze(1).expand(-1, gX.shape[1], -1), gX)
    return (gX, glam.to(lam1.dtype)) if want_lam1 else gX


class _SVMDualRoot(torch.autograd.Function):
    """Identity on the dual solution; closed-form KKT backward on active faces × features."""

    @staticmethod
    def forward(ctx: Any, alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, hp: tuple) -> Tensor:
        ctx.save_for_backward(alpha, X, Y, lam1)
        ctx.hp = hp
        return alpha.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_alpha: Tensor) -> tuple[Tensor | None, ...]:
        from metasparse.solvers.group_sparse_svm import dual_gradient

        alpha, X, Y, lam1 = ctx.saved_tensors
        lam2, tau, solve = ctx.hp
        _, n, K = Y.shape
        want_x, want_lam = ctx.needs_input_grad[1], ctx.needs_input_grad[3]
        if not (want_x or want_lam):
            return None, None, None, None, None
        Xd = X.detach()
        if _use_cg_backward(solve, tau, n, K, X.shape[2]):
            out = _svm_backward_cg(alpha, Xd, Y, lam1, lam2, tau, grad_alpha, want_lam1=want_lam)
            gX, glam = out if want_lam else (out, None)
            return None, gX if want_x else None, None, glam, None
        st = _svm_structure(alpha, Xd, Y, lam1, lam2, tau)
        u = _solve_on_face(st, lam2, grad_alpha, project=True).to(X.dtype)
        with torch.enable_grad():
            Xg = Xd.requires_grad_(True)
            lg = lam1.detach().requires_grad_(True)
            gD = dual_gradient(alpha, Xg, Y, lg, lam2, tau)
            gX, glam = torch.autograd.grad(gD, (Xg, lg), grad_outputs=-u)
        return None, gX if want_x else None, None, glam if want_lam else None, None


class _SVMWeights(torch.autograd.Function):
    """``W = BST(Xᵀ(Y − α*))/λ2`` (T, K, p) with the implicit gradient of ``α*`` folded in."""

    @staticmethod
    def forward(
        ctx: Any,
        X: Tensor,
        alpha: Tensor,
        Y: Tensor,
        lam1: Tensor,
        Mt: Tensor | None,
        gram: Tensor | None,
        gram_mask: Tensor | None,
        hp: tuple,
    ) -> Tensor:
        from metasparse.solvers.group_sparse_svm import weights_from_m

        lam2, _ = hp
        if Mt is None:
            Mt = products.left((Y - alpha).transpose(1, 2), X.detach())  # (T, K, p)
        ctx.save_for_backward(X, alpha, Y, lam1, Mt, gram, gram_mask)  # spare backward passes
        ctx.hp = hp
        return weights_from_m(Mt, lam1, lam2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_w: Tensor) -> tuple[Tensor | None, ...]:
        X, alpha, Y, lam1, Mt, gram, gram_mask = ctx.saved_tensors
        lam2, tau = ctx.hp
        want_x, want_lam = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
        if not (want_x or want_lam):
            return (None,) * 8
        G = None if gram is None else (gram, gram_mask)
        out = _svm_backward_cg(
            alpha,
            X.detach(),
            Y,
            lam1.detach(),
            lam2,
            tau,
            None,
            grad_w,
            Mt=Mt,
            gram=G,
            want_lam1=want_lam,
        )
        gX, glam = out if want_lam else (out, None)
        return (gX if want_x else None, None, None, glam) + (None,) * 4


def svm_weights(
    alpha: Tensor,
    support: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    *,
    Mt: Tensor | None = None,
    gram: tuple[Tensor, Tensor | None] | None = None,
) -> Tensor:
    """Primal weights ``W = BST(Xᵀ(Y − α*), λ1)/λ2`` (T, K, p) of the dual solution ``α*``,
    differentiable w.r.t. ``support`` through both the direct path and the implicit ``α*``
    (one fused backward: matrix-free CG on the KKT system, needs ``τ > 0``), and w.r.t.
    ``lam1`` when it carries a graph (e.g. ``λ1 = ratio · λ_max(support)``).

    Optional, from the solver (each spares passes over ``support``): ``Mt`` = ``(Y − α*)ᵀX``
    (T, K, p) and ``gram`` = ``(X_S X_Sᵀ, S)``, the Gram matrix (T, n, n) over the features of
    the mask ``S`` (T, p) (``None``: all features).
    """
    if not tau > 0:
        raise ValueError("svm_weights needs tau > 0 (the CG backward); use svm_dual_root")
    G, mask = (None, None) if gram is None else gram
    return _SVMWeights.apply(
        support,
        alpha.detach(),
        Y,
        lam1,
        None if Mt is None else Mt.detach(),
        G,
        mask,
        (lam2, tau),
    )


def svm_dual_root(
    alpha: Tensor,
    support: Tensor,
    Y: Tensor,
    lam1: Tensor,
    lam2: float,
    tau: float,
    method: str = "closed_form",
    solve: str = "auto",
) -> Tensor:
    """Attach the group-sparse SVM dual solution ``alpha`` (T, n, K) to ``support``'s graph.

    ``method="closed_form"`` solves the KKT system of :func:`svm_dual_system` in float64, with
    ``solve="dense"`` (Cholesky of the explicit matrix), ``"cg"`` (matrix-free preconditioned
    CG, :func:`_svm_backward_cg`; τ > 0 only) or ``"auto"`` (CG unless τ = 0 or the episode is
    tiny, ``n·K·p ≤ 2e4``). ``method="generic"`` differentiates the
    projected-gradient fixed point ``α = proj_Δ(α − η ∇D(α, X))`` with :func:`implicit_root`
    (dense; for checks on small problems). Both differentiate w.r.t. ``lam1`` when it carries
    a graph (``∇D`` depends on it through the block soft-threshold). At ``τ = 0``
    the dual may have several solutions; the closed form then returns the minimum-norm
    solution of the singular system.
    """
    from metasparse.solvers.group_sparse_svm import dual_gradient, project_simplex

    if method == "closed_form":
        return _SVMDualRoot.apply(alpha.detach(), support, Y, lam1, (lam2, tau, solve))
    if method != "generic":
        raise ValueError(f"method must be 'closed_form' or 'generic', got {method!r}")
    with torch.no_grad():
        Xd = support.detach()
        L = torch.linalg.eigvalsh(Xd @ Xd.transpose(1, 2))[:, -1] / lam2 + tau
        eta = (1.0 / L).reshape(-1, 1, 1)

    def fixed_point(a: Tensor, X: Tensor, lam: Tensor) -> Tensor:
        return a - project_simplex(a - eta * dual_gradient(a, X, Y, lam, lam2, tau))

    return implicit_root(fixed_point, alpha, (support, lam1), solve="dense")
