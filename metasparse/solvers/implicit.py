"""Implicit differentiation of solver outputs: the place where metasparse owns the autograd
boundary between an inner solver and the outer (meta-)gradient.

Every inner problem (the group-sparse SVM head, the bi-level group-Lasso of the synthetic
experiments) is solved on *detached* tensors and re-attached to the graph with gradients from
the implicit function theorem; iterations are never unrolled. Two layers, one direction:

* :mod:`metasparse.solvers.root`, generic: :func:`implicit_root`, the decorator
  :func:`custom_root` and :func:`solve_transposed` (dense, CG or GMRES solves of
  ``(∂_z F)ᵀ u = z̄``);
* :mod:`metasparse.solvers.svm.backward`, the group-sparse Crammer–Singer dual:
  :func:`svm_dual_root` and :func:`svm_weights`, the KKT system solved in closed form on the
  active simplex faces and active features (:func:`svm_dual_system`; tests check that it agrees
  with the generic path).

This module only gathers their public names.
"""

from __future__ import annotations

from metasparse.solvers.root import OptimalityFn, custom_root, implicit_root, solve_transposed
from metasparse.solvers.svm.backward import svm_dual_root, svm_weights
from metasparse.solvers.svm.face import svm_dual_system

__all__ = [
    "OptimalityFn",
    "custom_root",
    "implicit_root",
    "solve_transposed",
    "svm_dual_root",
    "svm_dual_system",
    "svm_weights",
]
