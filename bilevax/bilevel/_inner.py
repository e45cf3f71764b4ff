r"""Solvers of the lower-level problem `min_y g(x, y)` used by hypergradients.

An inner solver offers two things:

- `step(g, y, x, t)`: one iteration, so that the solve can be unrolled
  (`UnrolledAdjoint`, `TruncatedAdjoint`) for `num_steps` iterations;
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
import optimistix as optx
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_dot, tree_norm


def largest_eigenvalue(
    hvp: Callable[[PyTree[Array]], PyTree[Array]], like: PyTree[Array], steps: int = 20
) -> Array:
    """Largest eigenvalue of a symmetric PSD operator given as `v -> H v`, by power
    iteration from a fixed pseudo-random start (deterministic, `jit`-able)."""
    leaves, treedef = jtu.tree_flatten(like)
    keys = jax.random.split(jax.random.key(0), max(len(leaves), 1))
    v = jtu.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, jnp.shape(a), jnp.result_type(a))
            for k, a in zip(keys, leaves, strict=False)
        ],
    )

    def normalise(w):
        n = tree_norm(w)
        return jtu.tree_map(lambda a: a / jnp.where(n > 0, n, 1.0), w)

    def body(_, w):
        return normalise(hvp(w))

    v = jax.lax.fori_loop(0, steps, body, normalise(v))
    return jnp.abs(tree_dot(v, hvp(v)))


def hessian_vector_product(fn: Callable[[PyTree[Array]], Array], y: PyTree[Array]):
    """`v -> ∇²fn(y) v` by forward-over-reverse differentiation."""
    grad = jax.grad(fn)
    return lambda v: jax.jvp(grad, (y,), (v,))[1]


def smoothness(fn: Callable[[PyTree[Array]], Array], y: PyTree[Array]) -> Array:
    """Estimate of the Lipschitz constant of `∇fn` at `y` (largest Hessian
    eigenvalue, by 20 power iterations), never below a tiny positive floor."""
    lip = largest_eigenvalue(hessian_vector_product(fn, y), y)
    tiny = jnp.finfo(jnp.result_type(lip)).tiny ** 0.5
    return jax.lax.stop_gradient(jnp.maximum(lip, tiny))


class AbstractInnerSolver(eqx.Module):
    """Solver of the lower-level problem; see the module docstring."""

    num_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def step(self, g: Callable, y: PyTree[Array], x: PyTree[Array], t: Array):
        """One iteration on `y ↦ g(x, y)`."""

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
    """

    num_steps: int = 1000
    stepsize: float | None = None

    def _eta(self, g, y, x):
        if self.stepsize is not None:
            return self.stepsize
        return 1.0 / smoothness(lambda y_: g(x, y_), jax.lax.stop_gradient(y))

    def step(self, g, y, x, t, eta=None):
        eta = self._eta(g, y, x) if eta is None else eta
        grad = jax.grad(g, argnums=1)(x, y)
        return jtu.tree_map(lambda a, b: a - eta * b, y, grad)

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

    Stops when the gradient's max-norm is below `tol` (Cauchy-type test of
    optimistix with `atol = tol`, `rtol = 0`) or after `num_steps` iterations.
    """

    num_steps: int = 1000
    history_length: int = 10

    def step(self, g, y, x, t):
        raise ValueError(
            "`LBFGS` cannot be unrolled; use `GradientDescent` with "
            "`UnrolledAdjoint`/`TruncatedAdjoint`, or `ImplicitAdjoint` with LBFGS."
        )

    def solve(self, g, y0, x, tol):
        solver = optx.LBFGS(rtol=0.0, atol=tol, history_length=self.history_length)
        sol = optx.minimise(
            lambda y, x_: g(x_, y),
            solver,
            y0,
            x,
            max_steps=self.num_steps,
            throw=False,
        )
        return sol.value, sol.stats["num_steps"]
