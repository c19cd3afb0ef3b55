"""Inner-problem solvers and the implicit-differentiation boundary (see :mod:`.implicit`)."""

from __future__ import annotations

from metasparse.solvers.implicit import custom_root, implicit_root, solve_transposed

__all__ = ["custom_root", "implicit_root", "solve_transposed"]
