"""Generic implicit differentiation of solver outputs (the custom-root boundary).

Every inner problem in metasparse is solved by an iterative solver that runs on *detached*
tensors. Its solution ``z*`` is then re-attached to the graph with exact gradients obtained from
the implicit function theorem applied to an optimality condition ``F(z*, θ) = 0``::

    dz*/dθ = −(∂_z F)^{-1} ∂_θ F      ⇒      θ̄ = −(∂_θ F)ᵀ u,   (∂_z F)ᵀ u = z̄

The iterations are never unrolled. :func:`implicit_root` (in the spirit of jaxopt/torchopt
``custom_root``) takes ``optimality_fn(z, *params) -> F`` (same shape as ``z``, tasks along dim 0
and independent), the detached root and the parameters, and returns the root attached to the
graph. Typical ``F`` for a composite problem ``min_z f(z, θ) + g(z)`` is the proximal-gradient
fixed point ``F(z, θ) = z − prox_{ηg}(z − η ∇_z f(z, θ))``; for a smooth problem, ``F = ∇_z f``.
The linear system ``(∂_z F)ᵀ u = z̄`` is solved per task by a dense solve (Jacobian rows from
batched vector-Jacobian products; best for up to a few hundred free coordinates) or matrix-free
by batched CG (symmetric ``∂_z F``, e.g. ``F = ∇f``) or GMRES (any ``F``). An optional ``active``
mask restricts the system to the free coordinates (e.g. the nonzero groups of a group-Lasso):
inactive coordinates must be *pinned* at the root, i.e. locally ``F_i(z, θ) = z_i − const``
(true for the prox-gradient map at a zero group whose gradient is strictly inside the
threshold); their gradient is then exactly zero. :func:`custom_root` is the decorator form.

The group-sparse SVM has its own, specialised backward (:mod:`metasparse.solvers.svm.backward`),
which uses this module's CG (:func:`pcg`); :mod:`metasparse.solvers.implicit` is the front that
exports both.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

OptimalityFn = Callable[..., Tensor]


_SOLVES = ("dense", "cg", "gmres")


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


def pcg(
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


def warn_unconverged(what: str, maxiter: int, res: float, tol: float, advice: str) -> None:
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
        u, res = pcg(matvec, rhs, tol, maxiter)
    else:
        u, res = _gmres(matvec, rhs, tol, maxiter, restart)
    if res > tol:
        advice = "raise maxiter, or use solve='dense'"
        warn_unconverged(f"implicit differentiation: {solve}", maxiter, res, tol, advice)
    return u if active is None else u * active.to(u.dtype)


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
