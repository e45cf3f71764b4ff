"""Implicit differentiation of solvers through their optimality conditions.

- `custom_root`, `custom_fixed_point`: decorators that give any solver an implicit
  derivative (forward and reverse mode, higher order, vmap, jit).
- `root_vjp`, `root_jvp`: the same products as functions, returning `ImplicitStats`
  (steps, residual, status) of the linear solve.
- `conditions`: ready optimality conditions (stationarity, proximal gradient,
  projected gradient, fixed point).
- `CG`, `Neumann`: conjugate gradients and the truncated Neumann series as lineax
  solvers for the adjoint system; any lineax solver (GMRES, BiCGStab, LU, ...)
  works too.
- `support_vjp`, `SupportAdjoint`: implicit derivatives of proximal-gradient
  fixed points (Lasso-type problems) with the adjoint system restricted to the
  support of the solution (Bertrand et al. 2020).
- `iterate`: differentiate through `T` steps of an iterative map, with
  `UnrolledAdjoint` (checkpointed), `TruncatedAdjoint(K)` or `ImplicitAdjoint`;
  `optax_step` turns an optax optimizer into such a map.
"""

from . import conditions as conditions
from ._implicit import (
    ImplicitStats as ImplicitStats,
    custom_fixed_point as custom_fixed_point,
    custom_root as custom_root,
    root_jvp as root_jvp,
    root_vjp as root_vjp,
)
from ._iterate import (
    AbstractIterateAdjoint as AbstractIterateAdjoint,
    ImplicitAdjoint as ImplicitAdjoint,
    TruncatedAdjoint as TruncatedAdjoint,
    UnrolledAdjoint as UnrolledAdjoint,
    iterate as iterate,
    optax_step as optax_step,
)
from ._linear_solve import (
    CG as CG,
    Neumann as Neumann,
    default_linear_solver as default_linear_solver,
    default_tolerance as default_tolerance,
)
from ._support import (
    SupportAdjoint as SupportAdjoint,
    SupportStats as SupportStats,
    support_vjp as support_vjp,
)

__all__ = [
    "AbstractIterateAdjoint",
    "CG",
    "ImplicitAdjoint",
    "ImplicitStats",
    "Neumann",
    "SupportAdjoint",
    "SupportStats",
    "TruncatedAdjoint",
    "UnrolledAdjoint",
    "conditions",
    "custom_fixed_point",
    "custom_root",
    "default_linear_solver",
    "default_tolerance",
    "iterate",
    "optax_step",
    "root_jvp",
    "root_vjp",
    "support_vjp",
]
