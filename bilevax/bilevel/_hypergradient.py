r"""The hypergradient `dF/dx` of `F(x) = f(x, y*(x))`, by any adjoint.

- `ImplicitAdjoint`: solve the inner problem to a tolerance, then
  `dF/dx = ∇_x f - ∇²_{xy} g · q` with `∇²_{yy} g · q = ∇_y f` (one linear solve,
  CG by default since `∇²_{yy} g` is symmetric);
- `UnrolledAdjoint` / `TruncatedAdjoint(K)`: back-propagate through the
  `inner_solver.num_steps` iterations of the inner solver (all, or the last `K`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from .._display import fields_repr, status_name, summarize
from .._jit import EagerJit
from ..implicit import ImplicitAdjoint, conditions, custom_root, iterate, root_vjp
from ..implicit._iterate import AbstractIterateAdjoint
from ..implicit._linear_solve import CG, default_tolerance, raise_if_failed
from ..implicit._tree import tree_all_finite, tree_norm
from ..solvers import RESULTS, AugmentedLagrangian, ConstrainedProblem, minimize
from ._inner import AbstractInnerSolver, GradientDescent
from ._problem import BilevelProblem, as_data, check_problem
from ._proximal import ProximalGradient


class ConstrainedInner(eqx.Module):
    """Inner solver for a lower level with constraints: `problem.inner_constraints`
    (`c(x, y) <= 0`), `problem.inner_equalities` (`e(x, y) = 0`) and optional
    `bounds` on `y`, solved by `bilevax.solvers.minimize` with `solver`; the
    hypergradient goes through the KKT conditions of the lower level (active-set
    aware; strict complementarity assumed), whatever `adjoint` is given.

    **Arguments:** `solver` (default `bilevax.solvers.AugmentedLagrangian()`),
    `bounds` (`(lower, upper)` like `y`, or `None`).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = min(x, 4)
    ...     outer=lambda x, y, b: 0.5 * (jnp.sum((x - 1) ** 2) + jnp.sum((y - 3) ** 2)),
    ...     inner=lambda x, y, b: jnp.sum(0.5 * y**2 - 4 * y),
    ...     inner_constraints=lambda x, y: y - x,
    ... )
    >>> inner = bx.bilevel.ConstrainedInner()
    >>> x = jnp.array([1.0])
    >>> value, grad, y, _ = bx.bilevel.hypergradient(problem, x, jnp.zeros(1), inner)
    >>> print(y.round(3), grad.round(3))  # dF/dx = (x - 1) + (y - 3) dy/dx
    [1.] [-2.]

    ```
    """

    solver: eqx.Module = AugmentedLagrangian()
    bounds: tuple | None = None


def _constrained_hypergradient(problem, f, g, x, y0, inner: ConstrainedInner):
    swap = lambda fn: None if fn is None else (lambda y_, x_: fn(x_, y_))
    lower_level = ConstrainedProblem(
        lambda y_, x_: g(x_, y_),
        eq=swap(problem.inner_equalities),
        ineq=swap(problem.inner_constraints),
        bounds=inner.bounds,
    )

    def outer_loss(x_):
        sol = minimize(
            lower_level, jax.lax.stop_gradient(y0), x_, inner.solver, throw=False
        )
        return f(x_, sol.y), sol

    value, backward, sol = jax.vjp(outer_loss, x, has_aux=True)
    failed = sol.result != RESULTS.successful
    # A failed lower level (e.g. infeasible constraints) has no KKT point to
    # differentiate at: its KKT matrix may be singular. The adjoint solve is only
    # run on success; on failure the hypergradient is zero and `inner_failed` set.
    grad = jax.lax.cond(
        failed,
        lambda: jtu.tree_map(jnp.zeros_like, x),
        lambda: backward(jnp.ones_like(value))[0],
    )
    dtype = jnp.result_type(*jtu.tree_leaves(y0))
    zero = jnp.zeros((), dtype)
    stats = HypergradientStats(
        sol.stats["num_steps"],
        sol.stats["kkt_residual"].astype(dtype),
        jnp.array(0),
        zero,
        lx.RESULTS.successful,
        failed,
        inner_result=sol.result,
    )
    return value, grad, sol.y, stats


class HypergradientStats(eqx.Module):
    """Diagnostics of one hypergradient.

    - `inner_steps`: iterations of the inner solver.
    - `inner_residual`: `‖∇_y g(x, y)‖` at the returned `y`.
    - `linear_steps`, `linear_residual`: of the adjoint solve (implicit only; zero
      otherwise).
    - `linear_result`: lineax status of the adjoint solve (`successful` when there
      is none).
    - `inner_failed`: the inner solve failed: `ConstrainedInner` reported failure
      (infeasible constraints, no convergence, NaN), or the inner residual is
      non-finite, or a tolerance-based solve (implicit adjoint) left it more than
      10 times larger than at its start `y0` (the inner iteration diverges).
    - `inner_result`: a `bilevax.solvers.RESULTS`: `successful`, `nonfinite` (the
      inner residual is NaN or infinite), or `max_steps_reached` when a solve for
      the implicit adjoint stopped short of the tolerance `inner_rtol` (see
      `hypergradient`): the implicit function theorem only holds at a solution,
      so that hypergradient may be wrong, even in sign. An unrolled or truncated
      adjoint has no tolerance: it differentiates exactly the iterations it ran,
      converged or not, and reports `successful` (the iterations ran and are
      finite; it does not say that the inner problem is solved: `inner_residual`
      tells how far from a solution they stopped) or `nonfinite`.
    - `adjoint`: the adjoint vector `v` of `∇²_yy g v = ∇_y f` (implicit only;
      `None` otherwise), the warm start `adjoint_y0` of the next hypergradient.
      Not shown in the repr.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> _, _, _, stats = bx.bilevel.hypergradient(problem, jnp.ones(2), y0)
    >>> stats
    HypergradientStats(inner_steps=1, inner_residual=0, linear_steps=0,
                       linear_residual=0, linear_result=successful,
                       inner_failed=False, inner_result=successful)

    ```
    """

    inner_steps: Array
    inner_residual: Array
    linear_steps: Array
    linear_residual: Array
    linear_result: lx.RESULTS
    inner_failed: Array = eqx.field(default_factory=lambda: jnp.array(False))
    adjoint: PyTree[Array] = None
    inner_result: RESULTS = eqx.field(default_factory=lambda: RESULTS.successful)

    def __repr__(self):
        fields = {
            k: summarize(getattr(self, k))
            for k in (
                "inner_steps",
                "inner_residual",
                "linear_steps",
                "linear_residual",
            )
        }
        fields["linear_result"] = status_name(self.linear_result)
        fields["inner_failed"] = summarize(self.inner_failed)
        fields["inner_result"] = status_name(self.inner_result)
        return fields_repr("HypergradientStats", fields)


def hypergradient(
    problem: BilevelProblem,
    x: PyTree[Array],
    y0: PyTree[Array],
    inner_solver: AbstractInnerSolver = GradientDescent(),  # noqa: B008 (immutable)
    adjoint: AbstractIterateAdjoint = ImplicitAdjoint(),  # noqa: B008 (immutable)
    data=None,
    *,
    tol: float | Array | None = None,
    inner_rtol: float | Array = 1e-3,
    adjoint_y0: PyTree[Array] | None = None,
    throw: bool = True,
):
    r"""Solve the inner problem at `x` and return `(F(x), dF/dx, y, stats)`.

    **Arguments:**

    - `problem`: a `BilevelProblem`.
    - `x`: outer variables; `y0`: start of the inner solver (warm or cold start is
      the caller's choice).
    - `inner_solver`: `GradientDescent(...)` (default), `LBFGS(...)` (implicit
      only) or `ConstrainedInner(...)` for a lower level with constraints
      (derivatives through its KKT conditions).
    - `adjoint`: `ImplicitAdjoint(linear_solver)` (default; `linear_solver=None`
      means conjugate gradients), `UnrolledAdjoint(...)` or `TruncatedAdjoint(K)`.
      `ImplicitAdjoint.condition` is ignored: the condition is `∇_y g = 0`.
    - `data`: `(inner_data, outer_data)` (used whole: take minibatches with
      `sample_batch` before calling for a stochastic hypergradient), or `None`.
    - `tol`: implicit only: inner solve to `‖∇_y g‖ <= tol` and adjoint CG to
      relative residual `tol` (default: 1e-10 in float64, 1e-5 in float32).
    - `inner_rtol`: implicit only: the inner solve counts as converged when its
      residual `‖∇_y g(x, y)‖` at the returned `y` is at most `tol` or at most
      `inner_rtol · ‖∇_y g(x, y0)‖` (default 1e-3: three orders of magnitude
      below the starting residual). Otherwise `stats.inner_result` is
      `max_steps_reached` and `throw=True` raises: the implicit function theorem
      only holds at a solution. Pass `inner_rtol=float("inf")` to accept any
      finite inner solution.
    - `adjoint_y0`: implicit only: initial guess of the adjoint vector (a pytree
      like `y`), e.g. the previous outer step's `stats.adjoint` (HOAG's warm
      start); used by `bilevax.implicit.CG` and lineax's iterative solvers.
    - `throw`: raise a runtime error when the outer loss, the hypergradient or the
      inner solution is not finite (NaN in the data, a lower level that diverges).
      With `throw=False` they are returned as they are, for the caller to check;
      the algorithms' `run` does, and stops with `RESULTS.diverged`. A failed
      adjoint solve (`stats.linear_result`) raises too. Whether the inner solve
      converged is in `stats` either way (`stats.inner_result`); with the
      implicit adjoint an unconverged inner solve raises too, naming the remedies
      (more inner steps, a larger inner step size, a warm start `y0`). A failed
      lower level (`stats.inner_failed`: `ConstrainedInner` reports failure, e.g.
      infeasible constraints at `x`, or the inner residual is non-finite or grew)
      also raises; with `throw=False` a `ConstrainedInner` failure gives a zero
      hypergradient (no adjoint solve is attempted), and the algorithms' `run`
      stops with `RESULTS.inner_failed`. Warm-started `HypergradientDescent` and
      `HOAG` call this with `throw=False` and only count the steps whose inner
      solve did not converge (`BilevelResult.inner_unconverged_steps`).

    **Returns:** `(value, grad, y, stats)`: the outer loss at `(x, y)`, the
    hypergradient (a pytree like `x`), the inner solution and `HypergradientStats`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> x = jnp.array([1.0, 2.0])
    >>> value, grad, y, stats = bx.bilevel.hypergradient(problem, x, y0)
    >>> print(grad.round(4))  # exact: (x - 1) + x
    [1. 3.]
    >>> adjoint = bx.implicit.TruncatedAdjoint(10)
    >>> print(bx.bilevel.hypergradient(problem, x, y0, adjoint=adjoint)[1].round(4))
    [1. 3.]

    ```
    """
    return _jit_hypergradient(
        x, y0, data, adjoint_y0, problem, inner_solver, adjoint, tol, inner_rtol, throw
    )


def _compiled_hypergradient(
    x, y0, data, adjoint_y0, problem, inner_solver, adjoint, tol, inner_rtol, throw
):
    out = _hypergradient(
        problem, x, y0, inner_solver, adjoint, data, tol, inner_rtol, adjoint_y0
    )
    if not throw:
        return out
    # a NaN inner residual: NaN data that the inner solver never moved from y0
    finite = tree_all_finite(out[:3]) & jnp.all(jnp.isfinite(out[3].inner_residual))
    message = (
        "`hypergradient`: the outer loss, the hypergradient, the inner solution or "
        "its residual is non-finite (NaN or infinity): NaN in the data, or a lower "
        "level that diverges (unbounded below, or too large a step). Pass "
        "`throw=False` to get the values and `stats` instead."
    )
    out = eqx.error_if(out, ~finite, message)
    out = eqx.error_if(
        out,
        out[3].inner_failed,
        "`hypergradient`: the lower-level solve failed (`stats.inner_failed`: "
        "infeasible constraints, no convergence, NaN, or an inner iteration whose "
        "residual ‖∇_y g‖ grew: lower the inner step size); there is no solution "
        "to differentiate. Pass `throw=False` to get the status in `stats` instead.",
    )
    out = eqx.error_if(
        out,
        out[3].inner_result == RESULTS.max_steps_reached,
        "`hypergradient`: the inner solve did not converge (`stats.inner_result` is "
        "`max_steps_reached`: ‖∇_y g(x, y)‖ above `tol` and above `inner_rtol` times "
        "its value at y0), and the implicit function theorem only holds at a "
        "solution: this hypergradient may be wrong, even in sign. Give the inner "
        "solver more steps (its `num_steps=...`) or a larger step "
        "size, or warm-start `y0` near the solution; or pass `throw=False` and "
        "read `stats`.",
    )
    linear_solver = getattr(adjoint, "linear_solver", None) or CG
    return raise_if_failed(
        out,
        out[3].linear_result,
        out[3].linear_residual,
        linear_solver,
        "`hypergradient`",
        "stats.linear_result",
    )


# Compiled once per static configuration and shapes: a repeated eager call with
# the same problem functions reuses the compiled program (inside `jit` it is inlined).
_jit_hypergradient = EagerJit(_compiled_hypergradient, num_arrays=4, num_args=10)


def _implicit_in_x(condition, linear_solver, y, x):
    """`y` unchanged in value, and differentiable in `x` by the implicit function
    theorem (`dy/dx = -(∂_y F)⁻¹ ∂_x F`): the value, the inner solution and the
    hypergradient returned (second order: an outer Newton or Hessian-vector step)
    then have their exact derivatives, not only their direct terms."""
    solution = custom_root(condition, linear_solver)(lambda init, x_: init)
    return solution(jax.lax.stop_gradient(y), x)


def _inner_status(residual, start, tol, inner_rtol):
    """`(inner_result, inner_failed)` of a solve to tolerance from the residual it
    reached and the one it started from (see `HypergradientStats`)."""
    finite = jnp.isfinite(residual)
    converged = (residual <= tol) | (residual <= inner_rtol * start)
    result = RESULTS.where(
        finite,
        RESULTS.where(converged, RESULTS.successful, RESULTS.max_steps_reached),
        RESULTS.nonfinite,
    )
    # growth by a factor 10: a diverging iteration, not the non-monotone residual
    # of a converging one on a nonconvex lower level
    return result, ~finite | (~converged & (residual > 10 * start))


def _hypergradient(
    problem, x, y0, inner_solver, adjoint, data, tol, inner_rtol, adjoint_y0
):
    data = as_data(data)
    check_problem(problem, x, y0, data, ("x", "y0"))
    g = lambda x_, y_: problem.inner(x_, y_, data.inner)
    f = lambda x_, y_: problem.outer(x_, y_, data.outer)
    if isinstance(inner_solver, ConstrainedInner):
        return _constrained_hypergradient(problem, f, g, x, y0, inner_solver)
    if isinstance(inner_solver, ProximalGradient) and isinstance(
        adjoint, ImplicitAdjoint
    ):  # through the prox fixed point, on the support
        *out, parts = inner_solver.implicit_hypergradient(f, g, x, y0, tol)
        return (*out, HypergradientStats(*parts))
    grad_y_g = jax.grad(g, argnums=1)

    if isinstance(adjoint, ImplicitAdjoint):
        dtype = jnp.result_type(*jtu.tree_leaves(y0))
        tol = default_tolerance(dtype) if tol is None else tol
        y, inner_steps = inner_solver.solve(
            g, jax.lax.stop_gradient(y0), jax.lax.stop_gradient(x), tol
        )
        linear_solver = adjoint.linear_solver
        if linear_solver is None:
            linear_solver = CG(rtol=tol)
        condition = conditions.stationarity(lambda y_, x_: g(x_, y_))
        y = _implicit_in_x(condition, linear_solver, y, x)
        value, (grad_x, grad_y) = jax.value_and_grad(f, argnums=(0, 1))(x, y)
        (ct_x,), istats = root_vjp(
            condition,
            y,
            (x,),
            grad_y,
            linear_solver=linear_solver,
            tags=condition.tags,
            options=None if adjoint_y0 is None else {"y0": adjoint_y0},
            throw=False,
        )
        grad = jtu.tree_map(jnp.add, grad_x, ct_x)
        residual = tree_norm(grad_y_g(x, y))
        start = tree_norm(grad_y_g(x, jax.lax.stop_gradient(y0)))
        inner_result, failed = _inner_status(residual, start, tol, inner_rtol)
        stats = HypergradientStats(
            inner_steps,
            residual,
            istats.num_steps,
            istats.residual,
            istats.result,
            failed,
            adjoint=istats.solution,
            inner_result=inner_result,
        )
        return value, grad, y, stats

    if not isinstance(adjoint, AbstractIterateAdjoint):
        raise TypeError(
            "`adjoint` must be ImplicitAdjoint, UnrolledAdjoint or TruncatedAdjoint; "
            f"got {adjoint!r}."
        )
    step = inner_solver.make_step(g, jax.lax.stop_gradient(y0), x)

    def outer_of_x(x_):
        y_ = iterate(step, y0, x_, inner_solver.num_steps, adjoint=adjoint)
        return f(x_, y_), y_

    (value, y), grad = jax.value_and_grad(outer_of_x, has_aux=True)(x)
    residual = tree_norm(grad_y_g(x, y))
    finite = jnp.isfinite(residual)
    stats = HypergradientStats(
        jnp.array(inner_solver.num_steps),
        residual,
        jnp.array(0),
        jnp.zeros((), jnp.result_type(*jtu.tree_leaves(x))),
        lx.RESULTS.successful,
        ~finite,
        inner_result=RESULTS.where(finite, RESULTS.successful, RESULTS.nonfinite),
    )
    return value, grad, y, stats
