r"""`ProximalGradient`: the inner solver for lower levels with a non-smooth
penalty, `min_y g(x, y) + h(y, θ(x))`, stated as the smooth part `g` (the
problem's `inner`) and the prox of `h` (Lasso, elastic net, group Lasso, ...).

Solved by FISTA (Beck & Teboulle 2009) with backtracking on the step and
adaptive restart (O'Donoghue & Candès 2015); differentiated through its
fixed point with the adjoint system restricted to the support of the solution
(Bertrand et al., ICML 2020; `bilevax.implicit.support_vjp`).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._linear_solve import default_tolerance
from ..implicit._support import SupportAdjoint, support_vjp
from ..implicit._tree import tree_dot, tree_norm
from ._inner import AbstractInnerSolver, smoothness


def _identity(x):
    return x


class _FistaState(eqx.Module):
    y: PyTree[Array]
    z: PyTree[Array]
    t: Array
    lipschitz: Array
    residual: Array
    k: Array


def _sub(a, b):
    return jtu.tree_map(jnp.subtract, a, b)


class ProximalGradient(AbstractInnerSolver):
    r"""FISTA with backtracking and adaptive restart for
    `min_y g(x, y) + h(y, θ(x))`: `g` is the problem's `inner` (smooth), `h` is
    given by its prox.

    **Arguments:**

    - `prox`: `prox(v, θ, η) = argmin_u ½‖u - v‖² + η h(u, θ)`, e.g.
      `bilevax.prox.l1`, `elastic_net`, `group_l1` (any `jaxopt.prox` operator).
    - `penalty_params`: `θ(x)`, the prox parameters as a differentiable function
      of the outer variables (default: `θ = x`); e.g. `jnp.exp` for `x = log α`.
    - `num_steps`: iteration cap of the solve; iterations when unrolled.
    - `stepsize`: first step `η`; `None` (default) takes `1/L` with `L` estimated
      by power iteration at the start. Backtracking halves it whenever the
      descent lemma fails, so it need not be exact.
    - `restart`: adaptive (gradient-based) restart of the momentum.
    - `support`: `bilevax.implicit.SupportAdjoint` configuring the
      support-restricted adjoint solve used by `ImplicitAdjoint`.

    Stops when the gradient mapping `‖(z - prox(z - η∇g(z)))/η‖ <= tol` at the
    extrapolated point. With `ImplicitAdjoint` (the default) the hypergradient
    goes through the fixed point `y = prox(y - η∇_y g, θ(x), η)`, on the support
    of `y` only; `ImplicitAdjoint.linear_solver` is not used (the support solve
    is dense, or `support.fallback`). With `UnrolledAdjoint`/`TruncatedAdjoint`
    the unrolled map is the proximal-gradient step (ISTA) with the step at `y0`.
    `HypergradientStats.inner_residual` is the gradient mapping's norm.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> X = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> t = jnp.array([2.0, 0.1, 2.1])
    >>> problem = bx.bilevel.BilevelProblem(  # Lasso with α = exp(x)
    ...     outer=lambda x, w, b: 0.5 * jnp.sum((w - jnp.array([1.0, 0.0])) ** 2),
    ...     inner=lambda x, w, b: 0.5 * jnp.sum((X @ w - t) ** 2),
    ... )
    >>> inner = bx.bilevel.ProximalGradient(bx.prox.l1, jnp.exp)
    >>> value, grad, w, stats = bx.bilevel.hypergradient(
    ...     problem, jnp.array(0.0), jnp.zeros(2), inner
    ... )
    >>> print([round(float(a), 3) for a in w], round(float(grad), 3))
    [1.55, 0.0] -0.275
    >>> int(stats.linear_steps)  # the adjoint system is 1 × 1: w₂ = 0 is off support
    1

    ```
    """

    prox: Callable
    penalty_params: Callable = _identity
    num_steps: int = 1000
    stepsize: float | None = None
    restart: bool = True
    support: SupportAdjoint = SupportAdjoint()  # noqa: RUF009 (immutable)

    def _lipschitz(self, g, y, x):
        if self.stepsize is not None:
            return jnp.asarray(1.0 / self.stepsize)
        return smoothness(lambda y_: g(x, y_), jax.lax.stop_gradient(y))

    def _prox_step(self, y, grad, theta, lipschitz):
        v = jtu.tree_map(lambda a, b: a - b / lipschitz, y, grad)
        return self.prox(v, theta, 1.0 / lipschitz)

    def make_step(self, g, y0, x):
        lipschitz = self._lipschitz(g, y0, jax.lax.stop_gradient(x))
        grad_fn = jax.grad(g, argnums=1)
        return lambda y, x_, t: self._prox_step(
            y, grad_fn(x_, y), self.penalty_params(x_), lipschitz
        )

    def _backtrack(self, fn, z, theta, lipschitz):
        """The prox step from `z` with the smallest `L·2^j` that satisfies the
        descent lemma `f(y) <= f(z) + ⟨∇f(z), y - z⟩ + L/2 ‖y - z‖²`."""
        fz, gz = jax.value_and_grad(fn)(z)
        slack = 10 * jnp.finfo(jnp.result_type(fz)).eps * jnp.abs(fz)

        def bad(carry):
            y, L, j = carry
            d = _sub(y, z)
            bound = fz + tree_dot(gz, d) + 0.5 * L * tree_dot(d, d) + slack
            return (fn(y) > bound) & (j < 40)

        def grow(carry):
            _, L, j = carry
            return self._prox_step(z, gz, theta, 2 * L), 2 * L, j + 1

        start = (self._prox_step(z, gz, theta, lipschitz), lipschitz, 0)
        y, lipschitz, _ = jax.lax.while_loop(bad, grow, start)
        return y, lipschitz

    def _fista(self, g, y0, x, tol):
        fn = lambda y_: g(x, y_)
        theta = self.penalty_params(x)
        lip0 = self._lipschitz(g, y0, x).astype(jnp.result_type(tol, float))

        def cond(s):
            return (s.k < self.num_steps) & (s.residual > tol)

        def body(s):
            y, L = self._backtrack(fn, s.z, theta, s.lipschitz)
            residual = L * tree_norm(_sub(s.z, y))
            t = 0.5 * (1 + jnp.sqrt(1 + 4 * s.t**2))
            restart = self.restart & (tree_dot(_sub(s.z, y), _sub(y, s.y)) > 0)
            t = jnp.where(restart, 1.0, t)
            beta = jnp.where(restart, 0.0, (s.t - 1) / t)
            z = jtu.tree_map(lambda a, b: a + beta * (a - b), y, s.y)
            return _FistaState(y, z, t, L, residual, s.k + 1)

        inf = jnp.asarray(jnp.inf, lip0.dtype)
        one = jnp.ones((), lip0.dtype)
        state = _FistaState(y0, y0, one, lip0, inf, jnp.array(0))
        state = jax.lax.while_loop(cond, body, state)
        return state.y, state.k, state.lipschitz

    def solve(self, g, y0, x, tol):
        y, k, _ = self._fista(g, y0, x, tol)
        return y, k

    def gradient_mapping_norm(self, g, x, y, stepsize):
        """`‖(y - prox(y - η∇_y g(x, y), θ(x), η))/η‖`: zero exactly at a solution."""
        grad = jax.grad(g, argnums=1)(x, y)
        image = self._prox_step(y, grad, self.penalty_params(x), 1.0 / stepsize)
        return tree_norm(_sub(y, image)) / stepsize

    def implicit_hypergradient(self, f, g, x, y0, tol):
        """`(F(x), dF/dx, y, (inner_steps, inner_residual, linear_steps,
        linear_residual, linear_result))` through the support-restricted adjoint."""
        dtype = jnp.result_type(*jtu.tree_leaves(y0))
        tol = default_tolerance(dtype) if tol is None else tol
        x_sg = jax.lax.stop_gradient(x)
        y, steps, lipschitz = self._fista(g, jax.lax.stop_gradient(y0), x_sg, tol)
        y = jax.lax.stop_gradient(y)
        eta = jax.lax.stop_gradient(1.0 / lipschitz)
        value, (grad_x, grad_y) = jax.value_and_grad(f, argnums=(0, 1))(x, y)
        theta, theta_vjp = jax.vjp(self.penalty_params, x)
        smooth = lambda y_, x_: g(x_, y_)
        (ct_theta, (ct_x,)), stats = support_vjp(
            smooth, self.prox, eta, y, theta, (x,), grad_y, self.support, tol
        )
        (ct_penalty,) = theta_vjp(ct_theta)
        grad = jtu.tree_map(lambda a, b, c: a + b + c, grad_x, ct_x, ct_penalty)
        residual = self.gradient_mapping_norm(g, x_sg, y, eta)
        parts = (steps, residual, stats.num_steps, stats.residual, stats.result)
        return value, grad, y, parts
