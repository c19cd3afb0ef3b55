"""Inner-problem solvers and the implicit-differentiation boundary (see :mod:`.implicit`)."""

from __future__ import annotations

from metasparse.solvers.group_sparse_svm import (
    GroupSparseSVMResult,
    GroupSparseSVMSolver,
    lambda_max,
    objectives,
    solve_group_sparse_svm,
)
from metasparse.solvers.implicit import (
    custom_root,
    implicit_root,
    solve_transposed,
    svm_dual_root,
    svm_weights,
)

__all__ = [
    "GroupSparseSVMResult",
    "GroupSparseSVMSolver",
    "custom_root",
    "implicit_root",
    "lambda_max",
    "objectives",
    "solve_group_sparse_svm",
    "solve_transposed",
    "svm_dual_root",
    "svm_weights",
]
