"""Implicit differentiation of solvers through their optimality conditions.

- `custom_root`, `custom_fixed_point`: decorators that give any solver an implicit
  derivative (forward and reverse mode, higher order, vmap, jit).
- `root_vjp`, `root_jvp`: the same products as functions, returning `ImplicitStats`
  (steps, residual, status) of the linear solve.
- `conditions`: ready optimality conditions (stationarity, proximal gradient,
  projected gradient, fixed point).
- `Neumann`: truncated Neumann-series linear solver for the adjoint system; any
  lineax solver (CG, GMRES, BiCGStab, LU, ...) works too.
"""

from . import conditions as conditions
from ._implicit import (
    ImplicitStats as ImplicitStats,
    custom_fixed_point as custom_fixed_point,
    custom_root as custom_root,
    root_jvp as root_jvp,
    root_vjp as root_vjp,
)
from ._linear_solve import (
    Neumann as Neumann,
    default_linear_solver as default_linear_solver,
    default_tolerance as default_tolerance,
)

__all__ = [
    "ImplicitStats",
    "Neumann",
    "conditions",
    "custom_fixed_point",
    "custom_root",
    "default_linear_solver",
    "default_tolerance",
    "root_jvp",
    "root_vjp",
]
