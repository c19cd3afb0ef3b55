"""The group-sparse Crammer–Singer SVM: the public names, from their homes in :mod:`.svm`.

The solver is a small package (``docs/method.md`` §2 for the problem, ``README.md`` for the
layout); read it from :mod:`.svm.solve` (the entry point) down:

* :mod:`.svm.problem`: the primal and dual, the certificate, ``λ_max``, the input checks;
* :mod:`.svm.metric`, :mod:`.svm.steps`, :mod:`.svm.fista`: the batched FISTA dual solver;
* :mod:`.svm.polish`: Newton polish of badly conditioned episodes;
* :mod:`.svm.face`, :mod:`.svm.backward`: the implicit backward;
* :mod:`.tuning`: every measured threshold the above use.
"""

from __future__ import annotations

from metasparse.solvers.svm.fista import GroupSparseSVMSolver, SolverOutput
from metasparse.solvers.svm.problem import (
    DEFAULT_LAM2,
    DEFAULT_TAU,
    block_soft_threshold,
    column_norms,
    dual_gradient,
    lambda_max,
    objectives,
    project_simplex,
    weights_from_m,
)
from metasparse.solvers.svm.solve import GroupSparseSVMResult, solve_group_sparse_svm

__all__ = [
    "DEFAULT_LAM2",
    "DEFAULT_TAU",
    "GroupSparseSVMResult",
    "GroupSparseSVMSolver",
    "SolverOutput",
    "block_soft_threshold",
    "column_norms",
    "dual_gradient",
    "lambda_max",
    "objectives",
    "project_simplex",
    "solve_group_sparse_svm",
    "weights_from_m",
]
