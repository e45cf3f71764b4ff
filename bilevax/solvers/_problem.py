"""Constrained problems, their solutions and statuses."""

from collections.abc import Callable

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


class RESULTS(eqxi.Enumeration):
    """Status of a constrained solve."""

    successful = ""
    max_steps_reached = (
        "The KKT residual did not reach the tolerance within `max_steps` iterations."
    )
    singular = (
        "The constraint Jacobian is (numerically) rank deficient at an iterate: "
        "the Newton-KKT system is singular. Remove redundant constraints."
    )
    nonfinite = "The objective, the constraints or an iterate became NaN or infinite."


class ConstrainedProblem(eqx.Module):
    r"""`min_y objective(y, args)` subject to `eq(y, args) = 0`,
    `ineq(y, args) <= 0` and `lower <= y <= upper`.

    **Arguments:**

    - `objective`: `f(y, args) -> scalar`, `y` any pytree of float arrays.
    - `eq`: optional `c(y, args) -> (m,) array` (equality constraints).
    - `ineq`: optional `h(y, args) -> (p,) array` (inequalities, `h <= 0`).
    - `bounds`: optional `(lower, upper)` pytrees like `y` (`±inf` for none).
    """

    objective: Callable[[PyTree, PyTree], Array]
    eq: Callable[[PyTree, PyTree], Array] | None = None
    ineq: Callable[[PyTree, PyTree], Array] | None = None
    bounds: tuple[PyTree, PyTree] | None = None


class ConstrainedSolution(eqx.Module):
    """Result of `minimize`.

    - `y`: the solution (structure of `y0`).
    - `multipliers`: `{"eq": (m,), "ineq": (p,)}` Lagrange multipliers (absent
      keys for absent constraint kinds), sign convention `L = f + λᵀc + μᵀh`.
    - `stats`: `num_steps`, `kkt_residual` and solver-specific counters.
    - `result`: a `RESULTS` status.
    """

    y: PyTree[Array]
    multipliers: dict[str, Array]
    stats: dict[str, Array]
    result: RESULTS


def check_constraint_output(fn, name: str, y, args) -> int:
    """The number of constraints `fn` returns (a clear error if not a vector)."""
    out = jax.eval_shape(fn, y, args)
    if not isinstance(out, jax.ShapeDtypeStruct) or len(out.shape) != 1:
        raise ValueError(
            f"`{name}(y, args)` must return a 1-D array of constraint values; got "
            f"{out}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`{name}(y, args)` must return floats; got {out.dtype}.")
    return out.shape[0]
