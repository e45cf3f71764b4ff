"""Constrained problems, their solutions and statuses."""

from collections.abc import Callable

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from .._display import fields_repr, status_name, summarize


class RESULTS(eqxi.Enumeration):
    """Status of a constrained solve.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.solvers.ConstrainedProblem(
    ...     lambda y, a: jnp.sum(y**2), ineq=lambda y, a: jnp.array([1.0 - y[0], y[0]])
    ... )  # y0 >= 1 and y0 <= 0: infeasible
    >>> solver = bx.solvers.AugmentedLagrangian()
    >>> solution = bx.solvers.minimize(problem, jnp.zeros(2), None, solver, throw=False)
    >>> print(solution.result == bx.solvers.RESULTS.infeasible)
    True

    ```
    """

    successful = ""
    max_steps_reached = (
        "The KKT residual did not reach the tolerance within `max_steps` iterations."
    )
    singular = (
        "The constraint Jacobian is (numerically) rank deficient at an iterate: "
        "the Newton-KKT system is singular. Remove redundant constraints."
    )
    infeasible = (
        "The constraints could not be satisfied: the penalty (or, for a projection, "
        "the dual multipliers) grew past its limit with the iterate still "
        "infeasible (the problem is probably infeasible)."
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

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.solvers.ConstrainedProblem(
    ...     objective=lambda y, a: jnp.sum((y - a) ** 2),
    ...     eq=lambda y, a: jnp.array([y[0] + y[1] - 1.0]),  # c(y) = 0
    ...     ineq=lambda y, a: jnp.array([y[2] - 0.5]),  # h(y) <= 0
    ...     bounds=(jnp.zeros(3), jnp.full(3, jnp.inf)),
    ... )
    >>> solver = bx.solvers.AugmentedLagrangian()
    >>> solution = bx.solvers.minimize(problem, jnp.zeros(3), jnp.ones(3), solver)
    >>> print(solution.y.round(3))
    [0.5 0.5 0.5]

    ```
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

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.solvers.ConstrainedProblem(
    ...     objective=lambda y, a: jnp.sum((y - a) ** 2),
    ...     eq=lambda y, a: jnp.array([jnp.sum(y) - 1.0]),
    ... )
    >>> solution = bx.solvers.minimize(problem, jnp.zeros(2), jnp.array([1.0, 1.0]))
    >>> print(solution.y.round(3), solution.multipliers["eq"].round(3))
    [0.5 0.5] [1.]
    >>> solution.result == bx.solvers.RESULTS.successful
    Array(True, dtype=bool)

    ```
    """

    y: PyTree[Array]
    multipliers: dict[str, Array]
    stats: dict[str, Array]
    result: RESULTS

    def __repr__(self):
        fields = {"result": status_name(self.result)}
        first = [k for k in ("num_steps", "kkt_residual") if k in self.stats]
        for k in first + sorted(set(self.stats) - set(first)):
            fields[k] = summarize(self.stats[k])
        fields["y"] = summarize(self.y)
        fields["multipliers"] = summarize(self.multipliers)
        return fields_repr("ConstrainedSolution", fields)


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


def flat_bounds(problem: ConstrainedProblem, y_flat: Array, unravel) -> tuple:
    """`problem.bounds` as two flat arrays like `y_flat` (`∓inf` where there are
    none), checked for structure and, when concrete, for `lower <= upper`."""
    inf = jnp.full_like(y_flat, jnp.inf)
    if problem.bounds is None:
        return -inf, inf
    if not isinstance(problem.bounds, tuple | list) or len(problem.bounds) != 2:
        raise ValueError("`bounds` must be a pair `(lower, upper)`.")
    y_leaves = jax.tree_util.tree_leaves(unravel(y_flat))
    flat = []
    for name, bound in zip(("lower", "upper"), problem.bounds, strict=True):
        leaves = jax.tree_util.tree_leaves(bound)
        try:
            if len(leaves) != len(y_leaves):
                raise ValueError(f"{len(leaves)} leaves for {len(y_leaves)} in `y0`")
            parts = [
                jnp.ravel(jnp.broadcast_to(jnp.asarray(b, y_flat.dtype), jnp.shape(y)))
                for b, y in zip(leaves, y_leaves, strict=True)
            ]
        except ValueError as e:
            raise ValueError(
                f"`bounds` must be `(lower, upper)`, each a pytree like `y0` (leaves "
                f"broadcastable to its leaves); the {name} bound does not fit: {e}"
            ) from None
        flat.append(jnp.concatenate(parts))
    lower, upper = flat
    concrete = not isinstance(lower, jax.core.Tracer)
    concrete = concrete and not isinstance(upper, jax.core.Tracer)
    if concrete and np.any(np.asarray(lower) > np.asarray(upper)):
        raise ValueError("`bounds`: some lower bound exceeds its upper bound.")
    return lower, upper


class FlatProblem(eqx.Module):
    """A `ConstrainedProblem` on the flat `(n,)` vector `y` (ravelled once by
    `minimize`) with its `args`: `f(y)`, `c(y)` (`(m,)`, empty without `eq`),
    `h(y)` (`(p,)`, empty without `ineq`), the flat bounds `lower`, `upper`
    (`∓inf` where none) and `has_bounds`."""

    problem: ConstrainedProblem
    args: PyTree
    unravel: Callable
    lower: Array
    upper: Array
    m: int = eqx.field(static=True)
    p: int = eqx.field(static=True)

    @property
    def has_bounds(self) -> bool:
        return self.problem.bounds is not None

    def f(self, y):
        return self.problem.objective(self.unravel(y), self.args)

    def c(self, y):
        if self.problem.eq is None:
            return jnp.zeros(0, y.dtype)
        return self.problem.eq(self.unravel(y), self.args)

    def h(self, y):
        if self.problem.ineq is None:
            return jnp.zeros(0, y.dtype)
        return self.problem.ineq(self.unravel(y), self.args)
