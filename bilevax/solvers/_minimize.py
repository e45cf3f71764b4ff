"""`minimize`: the one entry point of the constrained solvers, differentiable with
respect to `args` through the KKT conditions."""

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PRNGKeyArray, PyTree

from .._jit import EagerJit
from ..implicit import conditions, custom_root
from ..implicit._implicit import _check_floating
from ._base import AbstractConstrainedSolver, iterate
from ._problem import (
    RESULTS,
    ConstrainedProblem,
    ConstrainedSolution,
    FlatProblem,
    check_constraint_output as _check_constraint_output,
    flat_bounds as _flat_bounds,
)
from ._sketched_newton import SketchedNewton


def _check(problem: ConstrainedProblem, y0, args, n: int) -> dict[str, int]:
    value = jax.eval_shape(problem.objective, y0, args)
    if not isinstance(value, jax.ShapeDtypeStruct) or value.shape != ():
        raise ValueError(f"`objective(y, args)` must return a scalar; got {value}.")
    sizes = {}
    for name in ("eq", "ineq"):
        fn = getattr(problem, name)
        if fn is not None:
            sizes[name] = _check_constraint_output(fn, name, y0, args)
    if problem.bounds is not None:
        sizes["lower"] = sizes["upper"] = n
    return sizes


def _check_eager(problem: ConstrainedProblem, y0) -> None:
    """The checks that trace nothing: `y0` floating and non-empty, `bounds` that
    fit `y0` (with `lower <= upper` when concrete)."""
    if not jtu.tree_leaves(y0):
        raise TypeError("`y0` must be a non-empty pytree of float arrays.")
    _check_floating(y0, "y0")
    if problem.bounds is not None:
        y_flat, unravel = jfu.ravel_pytree(y0)
        _flat_bounds(problem, y_flat, unravel)


def _kkt_condition(problem: ConstrainedProblem, unravel, lower, upper):
    """`conditions.kkt` with the bounds as inequalities `l - y <= 0`, `y - u <= 0`
    (multipliers `"lower"`, `"upper"`; infinite bounds are inactive rows)."""
    if problem.bounds is None:
        return conditions.kkt(problem.objective, problem.eq, problem.ineq)
    n = lower.shape[0]

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
    solver: AbstractConstrainedSolver = SketchedNewton(),  # noqa: B008
    *,
    key: PRNGKeyArray | None = None,
    throw: bool = True,
    adjoint_solver: lx.AbstractLinearSolver = lx.SVD(),  # noqa: B008
) -> ConstrainedSolution:
    r"""Solve `problem` from `y0` with `solver`; derivatives of the solution and
    multipliers with respect to `args` come from the KKT conditions
    (`bilevax.implicit.conditions.kkt`, one `adjoint_solver` solve per
    cotangent/tangent), never from the solver's iterations.

    **Arguments:** `problem` (`ConstrainedProblem`), `y0` (pytree of floats),
    `args` (pytree passed to every function), `solver` (`SketchedNewton()` by
    default), `key` (for randomized solvers; default `jax.random.key(0)`), `throw`
    (default `True`: raise at run time, also under `jit`, when the status is not
    successful; the error names the status and what to try), `adjoint_solver`
    (default `lineax.SVD()` on the materialised KKT matrix: the minimum-norm
    least-squares adjoint, so that problems with redundant but consistent
    constraints are differentiated too; `lineax.LU()` is faster for large
    problems whose constraint Jacobian has full row rank).

    Compiled once per problem (the same function objects), solver, and shapes and
    dtypes of `y0` and `args` (`equinox.filter_jit`): later eager calls reuse it.

    **Returns:** a `ConstrainedSolution`; with `throw=False` check `.result`
    (`RESULTS.successful`).

    **Raises:** `TypeError`/`ValueError` naming the argument for bad input; with
    `throw=True`, a run-time error naming the status when the solve fails.

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
    if not isinstance(solver, AbstractConstrainedSolver):
        raise TypeError(
            "`solver` must be a `bilevax.solvers.AbstractConstrainedSolver` (e.g. "
            "`SketchedNewton()`, `AugmentedLagrangian()`); got "
            f"{type(solver).__name__}."
        )
    _check_eager(problem, y0)  # eager: concrete bounds are compared here
    return _jit_minimize(y0, args, key, problem, solver, throw, adjoint_solver)


def _minimize(y0, args, key, problem, solver, throw, adjoint_solver):
    y_flat, unravel = jfu.ravel_pytree(y0)
    lower, upper = _flat_bounds(problem, y_flat, unravel)
    sizes = _check(problem, y0, args, y_flat.shape[0])
    key = jax.random.key(0) if key is None else key
    multipliers0 = {k: jnp.zeros(v, y_flat.dtype) for k, v in sizes.items()}
    condition = _kkt_condition(problem, unravel, lower, upper)
    m, p = sizes.get("eq", 0), sizes.get("ineq", 0)

    @custom_root(condition, adjoint_solver, has_aux=True, throw=False)
    def solve(z0, args):
        flat = FlatProblem(problem, args, unravel, lower, upper, m, p)
        start = jfu.ravel_pytree(z0[0])[0]
        y, multipliers, stats, result = iterate(solver, flat, start, key)
        return (unravel(y), multipliers), (stats, result)

    (y, multipliers), (stats, result) = solve((y0, multipliers0), args)
    if throw:
        y = raise_if_failed(y, result)
    return ConstrainedSolution(y, multipliers, stats, result)


# Compiled once per problem, solver and shapes: a repeated eager call reruns only the
# compiled program (inside `jit` it is inlined).
_jit_minimize = EagerJit(_minimize, num_arrays=3, num_args=7)


_REMEDIES = {
    "max_steps_reached": "raise the solver's `max_steps`, loosen its `tol`, or "
    "start closer to a solution",
    "singular": "remove redundant constraints, or use `AugmentedLagrangian`",
    "infeasible": "check that the constraints can be met (and `bounds`), or raise "
    "`rho_max`",
    "nonfinite": "check the problem for NaN/inf at `y0` and `args`, try float64 "
    "(`jax.config.update('jax_enable_x64', True)`), or another solver",
}


def _failure_messages() -> list[str]:
    """One message per `RESULTS` index: the status by name, what it means and what
    to try (`throw=False` returns the status instead of raising)."""
    messages = [""] * len(RESULTS._name_to_item)
    for name, item in RESULTS._name_to_item.items():
        remedy = _REMEDIES.get(name, "")
        messages[int(item._value)] = (
            f"`minimize` failed with status `RESULTS.{name}`: {RESULTS[item]} "
            f"What to try: {remedy}; in float32, a looser `tol` or float64; another "
            "solver. Pass `throw=False` to get the status instead of this error."
        )
    return messages


def raise_if_failed(tree, result: RESULTS, who: str = "minimize"):
    """`tree`, with a run-time error naming `result` when it is not successful
    (works under `jit` and `vmap`)."""
    messages = [m.replace("`minimize`", f"`{who}`") for m in _failure_messages()]
    return eqx.branched_error_if(
        tree, result != RESULTS.successful, result._value, messages
    )
