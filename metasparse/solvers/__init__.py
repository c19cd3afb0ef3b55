"""Inner-problem solvers and their gradients (layout: ``README.md``).

The group-sparse SVM lives in :mod:`.svm` (entry point :func:`solve_group_sparse_svm`), the
generic implicit-differentiation boundary in :mod:`.root`; :mod:`.group_sparse_svm` and
:mod:`.implicit` gather their public names. Imports inside the package run one way
(``tests/test_import_graph.py``).
"""

from __future__ import annotations

from metasparse.solvers.root import custom_root, implicit_root, solve_transposed
from metasparse.solvers.svm.backward import svm_dual_root, svm_weights
from metasparse.solvers.svm.fista import GroupSparseSVMSolver
from metasparse.solvers.svm.problem import lambda_max, objectives
from metasparse.solvers.svm.solve import GroupSparseSVMResult, solve_group_sparse_svm

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
