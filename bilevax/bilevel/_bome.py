r"""BOME (Liu, Ye, Wright, Stone, Liu, NeurIPS 2022): a first-order bilevel method
on the value-function constraint, by a dynamic barrier gradient."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_axpy, tree_dot, tree_norm
from ._oracles import constants
from ._problem import BilevelData, sample_batch
from ._run import AbstractBilevelAlgorithm, StepInfo


class _BOMEState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    inner_step: Array
    xi: Array


def bome_steps(problem, x0, y0, data, lr_inner, lr) -> tuple[Array, Array]:
    """Default steps: `lr_inner/ℓ_g` for the inner loop, `lr/max(ℓ_h, ℓ_g)` for
    the joint step on `(x, y)` (the constants estimated at the start)."""
    c = constants(problem, x0, y0, data)
    return lr_inner / c.lip_g, lr / jnp.maximum(c.lip_h, c.lip_g)


def barrier_direction(grad_f, grad_q, eta):
    """`(∇f + λ∇q, λ)` with `λ = max(φ - ⟨∇f, ∇q⟩, 0)/‖∇q‖²`, `φ = η‖∇q‖²`
    (`λ = 0` when `∇q = 0`)."""
    norm2 = tree_dot(grad_q, grad_q)
    safe = jnp.where(norm2 > 0, norm2, 1.0)
    lam = jnp.where(
        norm2 > 0, jnp.maximum(eta * norm2 - tree_dot(grad_f, grad_q), 0.0) / safe, 0.0
    )
    return tree_axpy(lam, grad_q, grad_f), lam


class BOME(AbstractBilevelAlgorithm):
    r"""BOME (Liu, Ye, Wright, Stone, Liu, "BOME! Bilevel optimization made easy: a
    simple first-order approach", NeurIPS 2022).

    The lower level is the constraint `q(x, y) = g(x, y) - g*(x) <= 0`. Each
    iteration approximates `g*(x)` by `T = inner_steps` gradient steps from `y`:
    `ŷ = y_T`, `y_{t+1} = y_t - α ∇_y g(x, y_t)`, `y_0 = y`, held constant;
    `q̂ = g(x, y) - g(x, ŷ)`, `∇q̂ = (∇_x g(x, y) - ∇_x g(x, ŷ), ∇_y g(x, y))`; then
    one step on `w = (x, y)` along the dynamic barrier direction

        w ← w - ξ (∇f + λ ∇q̂),   λ = max(φ - ⟨∇f, ∇q̂⟩, 0) / ‖∇q̂‖²,
        φ = η ‖∇q̂‖²,

    the minimum-norm correction of `∇f` that makes `q̂` decrease at rate at least
    `φ` (`λ = 0` when `∇q̂ = 0`). Stochastic form: one inner minibatch for every
    `g` of a step (so that `q̂` is one function), one outer minibatch for `∇f`.

    **Arguments:**

    - `inner_steps`: `T` (default 10, as benchopt).
    - `eta`: `η` (default 0.5, as benchopt).
    - `lr_inner`: `α = lr_inner/ℓ_g` (default 1); `lr`: `ξ = lr/max(ℓ_h, ℓ_g)`
      (default 0.1), with the constants estimated at the start; or `inner_step`,
      `step_size` directly.
    - `batch_size`: minibatch size (`None`: whole data).

    `result.y` is `y` (it tracks `y*(x)` through the constraint); the recorded
    norm is that of the `x` part of the direction.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.BOME().run(problem, x0, y0, num_steps=300)
    >>> print([f"{v:.2f}" for v in result.x])  # near x = 0.5 (biased fixed points)
    ['0.49', '0.49']

    ```
    """

    inner_steps: int = 10
    eta: float = 0.5
    lr_inner: float = 1.0
    lr: float = 0.1
    inner_step: float | None = None
    step_size: float | None = None
    batch_size: int | None = None

    def init(self, problem, x0, y0, data: BilevelData, key):
        alpha, xi = self.inner_step, self.step_size
        if alpha is None or xi is None:
            alpha_, xi_ = bome_steps(problem, x0, y0, data, self.lr_inner, self.lr)
            alpha = alpha_ if alpha is None else alpha
            xi = xi_ if xi is None else xi
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        cast = lambda a: jnp.asarray(a, dtype)
        return _BOMEState(x0, y0, cast(alpha), cast(xi))

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state: _BOMEState, data: BilevelData, key: Array):
        """One BOME iteration (see the class docs)."""
        x, y = state.x, state.y
        k_g, k_f = jax.random.split(key)
        inner = sample_batch(data.inner, k_g, self.batch_size)
        outer = sample_batch(data.outer, k_f, self.batch_size)
        grad_g = jax.grad(problem.inner, argnums=(0, 1))
        inner_step = lambda _, z: tree_axpy(
            -state.inner_step, grad_g(x, z, inner)[1], z
        )
        y_hat = jax.lax.fori_loop(0, self.inner_steps, inner_step, y)
        (g_x, g_y), (g_x_hat, _) = grad_g(x, y, inner), grad_g(x, y_hat, inner)
        grad_q = (jtu.tree_map(jnp.subtract, g_x, g_x_hat), g_y)
        grad_f = jax.grad(problem.outer, argnums=(0, 1))(x, y, outer)
        (d_x, d_y), _ = barrier_direction(grad_f, grad_q, self.eta)
        new = _BOMEState(
            tree_axpy(-state.xi, d_x, x),
            tree_axpy(-state.xi, d_y, y),
            state.inner_step,
            state.xi,
        )
        return new, StepInfo(tree_norm(d_x))
