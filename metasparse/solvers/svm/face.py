"""The linear system of the SVM's implicit backward on the active faces × active features.

At the dual solution ``α*`` the KKT conditions restricted to the free coordinates (the faces
of the simplices, :func:`face_from_gradient`) and to the active features define ``α*`` as a
smooth function of ``X``; their matrix is ``P H P + (I − P)`` with ``H`` the dual Hessian and
``P`` the projection onto the faces' tangent space. Here: the faces, that matrix formed
explicitly (:func:`svm_dual_system`, :func:`solve_on_face`), the Gram matrices the CG path
preconditions with and the preconditioner itself. :mod:`.backward` uses them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metasparse.solvers import products
from metasparse.solvers.linalg import padded_index, spd_solve
from metasparse.solvers.rows import Rows
from metasparse.solvers.svm.problem import column_norms, dual_gradient, dual_hessian


def face_at(alpha: Tensor, X: Tensor, Y: Tensor, lam1: Tensor, lam2: float, tau: float) -> Tensor:
    """Free coordinates of ``α`` (see :func:`face_from_gradient`)."""
    return face_from_gradient(alpha, dual_gradient(alpha, X, Y, lam1, lam2, tau))


def face_from_gradient(alpha: Tensor, g: Tensor) -> Tensor:
    """Free coordinates of ``α`` given ``∇D(α)``: positive, except round-off positives (~1e-17
    left by the simplex projection) whose gradient exceeds the example's multiplier, i.e.
    clearly at 0."""
    mu = (alpha * g).sum(-1, keepdim=True)
    return (alpha > 0) & (alpha >= 1e-9 * (g - mu).clamp_min(0.0))


def svm_structure(
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
    tangent space, and what :func:`dense_matrix` needs to build the Hessian on them
    (``Mt = (Y − α)ᵀX``, (T, K, p), when the caller has it)."""
    T, n, K = Y.shape
    if face is None:
        face = face_at(alpha, X, Y, lam1, lam2, tau)
    sidx, svalid = padded_index(face.reshape(T, n * K))
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
    st = svm_structure(alpha, X, Y, lam1, lam2, tau)
    return dense_matrix(st, lam2), st["sidx"], st["svalid"]


def dense_matrix(st: dict[str, Any], lam2: float) -> Tensor:
    """``P H P + (I − P)`` formed explicitly (cost s²·a per task, in feature chunks)."""
    X, Mt = st["X"], st["Mt"]
    slots = (st["i_s"], st["k_s"])
    H = dual_hessian(
        Rows(X), Mt, column_norms(Mt), st["lam1"], lam2, st["tau"], slots=slots, dtype=X.dtype
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


def solve_on_face(st: dict[str, Any], lam2: float, rhs: Tensor, project: bool = False) -> Tensor:
    """``x`` (T, n, K), float64, zero off the face slots of ``st``, with ``(P H P + I − P) x =
    rhs`` on them: the dense solve shared by the τ = 0 backward and the direct face solve.
    ``project``: project ``rhs`` onto the faces' tangent space first."""
    T, n, K = rhs.shape
    sidx, svalid = st["sidx"], st["svalid"]
    r = rhs.reshape(T, n * K).gather(1, sidx).double() * svalid
    if project:
        r = (st["Pm"] @ r.unsqueeze(-1)).squeeze(-1)
    u_s = spd_solve(dense_matrix(st, lam2), r)
    x = torch.zeros(T, n * K, dtype=torch.float64, device=rhs.device)
    return x.scatter_add_(1, sidx, u_s * svalid).reshape(T, n, K)


def direct_face_solve(
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
    st = svm_structure(alpha, X, Y, lam1, lam2, tau, face=face.bool(), Mt=Mt)
    return solve_on_face(st, lam2, b)


def weighted_gram(X: Tensor, w: Tensor, chunk: int = 2048) -> Tensor:
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


def gram_from_forward(
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
    idx, valid = padded_index(diff)
    Xe = X.gather(2, idx.unsqueeze(1).expand(-1, X.shape[1], -1)).mul_(valid.unsqueeze(1))
    return G + weighted_gram(Xe, e.gather(1, idx) * valid).double()


def face_preconditioner(Gw: Tensor, m: Tensor, tau: float) -> Callable[[Tensor], Tensor]:
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
