"""`minimize`: the one entry point of the constrained solvers, differentiable with
respect to `args` through the KKT conditions."""

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PRNGKeyArray, PyTree

from ..implicit import conditions, custom_root
from ..implicit._implicit import _check_floating
from ._problem import (
    RESULTS,
    ConstrainedProblem,
    ConstrainedSolution,
    check_constraint_output as _check_constraint_output,
    flat_bounds as _flat_bounds,
)
from ._sketched_newton import SketchedNewton


def _check(problem: ConstrainedProblem, y0, args) -> dict[str, int]:
    if not jtu.tree_leaves(y0):
        raise TypeError("`y0` must be a non-empty pytree of float arrays.")
    _check_floating(y0, "y0")
    value = jax.eval_shape(problem.objective, y0, args)
    if not isinstance(value, jax.ShapeDtypeStruct) or value.shape != ():
        raise ValueError(f"`objective(y, args)` must return a scalar; got {value}.")
    sizes = {}
    for name in ("eq", "ineq"):
        fn = getattr(problem, name)
        if fn is not None:
            sizes[name] = _check_constraint_output(fn, name, y0, args)
    y_flat, unravel = jfu.ravel_pytree(y0)
    if problem.bounds is not None:
        _flat_bounds(problem, y_flat, unravel)
        sizes["lower"] = sizes["upper"] = y_flat.shape[0]
    return sizes


def _kkt_condition(problem: ConstrainedProblem, y0):
    """`conditions.kkt` with the bounds as inequalities `l - y <= 0`, `y - u <= 0`
    (multipliers `"lower"`, `"upper"`; infinite bounds are inactive rows)."""
    if problem.bounds is None:
        return conditions.kkt(problem.objective, problem.eq, problem.ineq)
    y_flat, unravel = jfu.ravel_pytree(y0)
    lower, upper = _flat_bounds(problem, y_flat, unravel)
    n = y_flat.shape[0]

    def ineq(y, args):
        y = jfu.ravel_pytree(y)[0]
        rows = [jnp.where(jnp.isfinite(lower), lower - y, -1.0)]
        rows.append(jnp.where(jnp.isfinite(upper), y - upper, -1.0))
        if problem.ineq is not None:
            rows.insert(0, problem.ineq(unravel(y), args))
        return jnp.concatenate(rows)

    combined = conditions.kkt(problem.objective, problem.eq, ineq)

    def fn(z, args):
        y, multipliers = z
        mu = [multipliers["lower"], multipliers["upper"]]
        if problem.ineq is not None:
            mu.insert(0, multipliers["ineq"])
        inner = {k: v for k, v in multipliers.items() if k == "eq"}
        inner["ineq"] = jnp.concatenate(mu)
        grad, out = combined.fn((y, inner), args)
        rows = out.pop("ineq")
        p = rows.shape[0] - 2 * n
        if problem.ineq is not None:
            out["ineq"] = rows[:p]
        out["lower"], out["upper"] = rows[p : p + n], rows[p + n :]
        return grad, out

    return conditions.OptimalityCondition(fn, combined.tags)


def minimize(
    problem: ConstrainedProblem,
    y0: PyTree,
    args: PyTree = None,
    solver=SketchedNewton(),  # noqa: B008
    *,
    key: PRNGKeyArray | None = None,
    throw: bool = False,
    adjoint_solver: lx.AbstractLinearSolver = lx.LU(),  # noqa: B008
) -> ConstrainedSolution:
    r"""Solve `problem` from `y0` with `solver`; derivatives of the solution and
    multipliers with respect to `args` come from the KKT conditions
    (`bilevax.implicit.conditions.kkt`, one `adjoint_solver` solve per
    cotangent/tangent), never from the solver's iterations.

    **Arguments:** `problem` (`ConstrainedProblem`), `y0` (pytree of floats),
    `args` (pytree passed to every function), `solver` (`SketchedNewton()` by
    default), `key` (for randomized solvers; default `jax.random.key(0)`), `throw`
    (raise at run time when the status is not successful), `adjoint_solver`
    (default `lineax.LU()` on the materialised KKT matrix).

    **Returns:** a `ConstrainedSolution`; check `.result` (`RESULTS.successful`)
    when `throw=False`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.solvers.ConstrainedProblem(
    ...     objective=lambda y, a: 0.5 * jnp.sum((y - a) ** 2),
    ...     eq=lambda y, a: jnp.array([jnp.sum(y) - 1.0]),
    ... )
    >>> solve = lambda a: bx.solvers.minimize(problem, jnp.zeros(2), a).y
    >>> print(solve(jnp.array([1.0, 2.0])).round(3) + 0.0)
    [0. 1.]
    >>> print(jax.jacobian(solve)(jnp.array([1.0, 2.0])).round(3))  # a projector
    [[ 0.5 -0.5]
     [-0.5  0.5]]

    ```
    """
    sizes = _check(problem, y0, args)
    key = jax.random.key(0) if key is None else key
    dtype = jnp.result_type(*jtu.tree_leaves(y0))
    multipliers0 = {k: jnp.zeros(v, dtype) for k, v in sizes.items()}
    condition = _kkt_condition(problem, y0)

    @custom_root(condition, adjoint_solver, has_aux=True, throw=False)
    def solve(z0, args):
        sol = solver.run(problem, z0[0], args, key)
        return (sol.y, sol.multipliers), (sol.stats, sol.result)

    (y, multipliers), (stats, result) = solve((y0, multipliers0), args)
    if throw:
        y = eqx.error_if(
            y,
            result != RESULTS.successful,
            "`minimize` failed: the status in `ConstrainedSolution.result` is not "
            "successful (no convergence, singular constraints, or NaN). Pass "
            "`throw=False` to inspect it.",
        )
    return ConstrainedSolution(y, multipliers, stats, result)
