r"""Solvers of the lower-level problem `min_y g(x, y)` used by hypergradients.

An inner solver offers two things:

- `make_step(g, y0, x)`: the iteration map `step(y, x, t)`, with its constants
  (e.g. the step size) fixed at the starting point, so that the solve can be
  unrolled (`UnrolledAdjoint`, `TruncatedAdjoint`) for `num_steps` iterations;
- `solve(g, y0, x, tol)`: iterate until `‖∇_y g‖ <= tol` (at most `num_steps`
  iterations), without a tape, for implicit differentiation. Returns the solution
  and the number of iterations.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optimistix as optx
from jaxtyping import Array, PyTree

from ..implicit._linear_solve import _dominant_eigenvalue
from ..implicit._tree import tree_norm


def smoothness(fn: Callable[[PyTree[Array]], Array], y: PyTree[Array]) -> Array:
    """Estimate of the Lipschitz constant of `∇fn` at `y` (largest Hessian
    eigenvalue, by 20 power iterations on Hessian-vector products), never below a
    tiny positive floor."""
    grad = jax.grad(fn)
    hessian = lx.FunctionLinearOperator(
        lambda v: jax.jvp(grad, (y,), (v,))[1],
        jax.eval_shape(lambda: y),
        lx.symmetric_tag,
    )
    lip = jnp.abs(_dominant_eigenvalue(hessian, steps=20))
    tiny = jnp.finfo(jnp.result_type(lip)).tiny ** 0.5
    return jax.lax.stop_gradient(jnp.maximum(lip, tiny))


class AbstractInnerSolver(eqx.Module):
    """Solver of the lower-level problem; see the module docstring.

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
    >>> for inner in (bx.bilevel.GradientDescent(100), bx.bilevel.LBFGS(100)):
    ...     value, grad, y, stats = bx.bilevel.hypergradient(problem, x, y0, inner)
    ...     print(type(inner).__name__, grad.round(4))
    GradientDescent [1. 3.]
    LBFGS [1. 3.]

    ```
    """

    num_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def make_step(self, g: Callable, y0: PyTree[Array], x: PyTree[Array]):
        """The iteration map `step(y, x, t) -> y` on `y ↦ g(x, y)`."""

    @abc.abstractmethod
    def solve(self, g: Callable, y0: PyTree[Array], x: PyTree[Array], tol: Array):
        """`(y, num_iterations)` with `‖∇_y g(x, y)‖ <= tol` or `num_steps` done."""


class GradientDescent(AbstractInnerSolver):
    r"""Gradient descent `y ← y - η ∇_y g(x, y)`.

    **Arguments:**

    - `num_steps`: iterations when unrolled; iteration cap when solving to a
      tolerance.
    - `stepsize`: `η`; `None` (default) takes `1/L`, with `L` the largest eigenvalue
      of `∇²_y g` at the starting point, estimated by power iteration (treated as a
      constant by differentiation). Right for quadratic and near-quadratic inner
      problems; give a smaller step if the curvature grows away from `y0`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> inner = bx.bilevel.GradientDescent(num_steps=200)  # step 1/L by power iteration
    >>> value, grad, y, stats = bx.bilevel.hypergradient(problem, x0 + 1, y0, inner)
    >>> print(y.round(4), int(stats.inner_steps))
    [1. 1.] 1

    ```
    """

    num_steps: int = 1000
    stepsize: float | None = None

    def _eta(self, g, y, x):
        if self.stepsize is not None:
            return self.stepsize
        return 1.0 / smoothness(lambda y_: g(x, y_), jax.lax.stop_gradient(y))

    def make_step(self, g, y0, x):
        eta = self._eta(g, y0, jax.lax.stop_gradient(x))
        grad_fn = jax.grad(g, argnums=1)
        return lambda y, x_, t: jtu.tree_map(
            lambda a, b: a - eta * b, y, grad_fn(x_, y)
        )

    def solve(self, g, y0, x, tol):
        eta = self._eta(g, y0, x)
        grad_fn = jax.grad(g, argnums=1)

        def cond(carry):
            _, grad, k = carry
            return (k < self.num_steps) & (tree_norm(grad) > tol)

        def body(carry):
            y, grad, k = carry
            y = jtu.tree_map(lambda a, b: a - eta * b, y, grad)
            return y, grad_fn(x, y), k + 1

        y, _, k = jax.lax.while_loop(cond, body, (y0, grad_fn(x, y0), jnp.array(0)))
        return y, k


class LBFGS(AbstractInnerSolver):
    r"""Limited-memory BFGS (optimistix) with a line search, for implicit
    differentiation only: a solve to tolerance, not an unrollable step.

    Stops when `‖∇_y g‖ <= tol` or after `num_steps` iterations (line-search
    trials included).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> inner = bx.bilevel.LBFGS(num_steps=100)
    >>> value, grad, y, stats = bx.bilevel.hypergradient(problem, x0 + 1, y0, inner)
    >>> print(grad.round(4), bool(stats.inner_residual < 1e-4))
    [1. 1.] True

    ```
    """

    num_steps: int = 1000
    history_length: int = 10

    def make_step(self, g, y0, x):
        raise ValueError(
            "`LBFGS` cannot be unrolled; use `GradientDescent` with "
            "`UnrolledAdjoint`/`TruncatedAdjoint`, or `ImplicitAdjoint` with LBFGS."
        )

    def solve(self, g, y0, x, tol):
        solver = _ToGradientNorm(
            optx.LBFGS(rtol=0.0, atol=0.0, history_length=self.history_length), tol
        )
        sol = optx.minimise(
            lambda y, x_: g(x_, y), solver, y0, x, max_steps=self.num_steps, throw=False
        )
        return sol.value, sol.stats["num_steps"]


class _ToGradientNorm(optx.AbstractMinimiser):
    """An optimistix quasi-Newton minimiser stopped when `‖∇f(y)‖ <= tol` (its own
    test compares successive `y` and `f`); the state holds the gradient at the
    accepted iterate."""

    solver: optx.AbstractQuasiNewton
    tol: float | Array
    rtol: float = 0.0
    atol: float = 0.0
    norm: Callable = optx.max_norm

    def init(self, fn, y, args, options, f_struct, aux_struct, tags):
        return self.solver.init(fn, y, args, options, f_struct, aux_struct, tags)

    def step(self, fn, y, args, options, state, tags):
        return self.solver.step(fn, y, args, options, state, tags)

    def terminate(self, fn, y, args, options, state, tags):
        small = tree_norm(state.f_info.grad) <= self.tol
        return small & jnp.logical_not(state.first_step), state.result

    def postprocess(self, fn, y, aux, args, options, state, tags, result):
        return self.solver.postprocess(fn, y, aux, args, options, state, tags, result)
