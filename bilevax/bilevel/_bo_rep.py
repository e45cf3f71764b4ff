r"""BO-REP (Hao, Gong, Liu, ICLR 2024): bilevel optimisation under unbounded
smoothness, by normalised momentum on `x` and periodic lower-level updates."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_axpy, tree_norm
from ._hypergradient import hypergradient
from ._ma_soba import ma_soba_constants
from ._oracles import inner_directions, outer_directions, project_ball
from ._problem import BilevelData, sample_batch
from ._run import AbstractBilevelAlgorithm, StepInfo


class _BOREPState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    v: PyTree[Array]
    momentum: PyTree[Array]
    rho: Array  # step of y and v
    eta: Array  # normalised step of x
    radius: Array
    k: Array


def _sgd(problem, x, y, rho, data, keys, batch_size):
    """`len(keys)` SGD steps on `y ↦ g(x, y)`."""
    grad = jax.grad(problem.inner, argnums=1)

    def body(y, key):
        return tree_axpy(
            -rho, grad(x, y, sample_batch(data.inner, key, batch_size)), y
        ), None

    return jax.lax.scan(body, y, keys)[0]


def bo_rep_constants(problem, x0, y0, data, lr_inner, lr_outer, radius_factor):
    """`ρ = lr_inner/ℓ_g`, the adjoint radius (as `MASOBA`) and the normalised step
    `η = lr_outer ‖∇h(x0)‖/ℓ_h` (the length of a gradient step `lr_outer/ℓ_h`;
    `∇h(x0)` by one full-data implicit hypergradient)."""
    rho, gamma, radius = ma_soba_constants(
        problem, x0, y0, data, lr_inner, lr_outer, radius_factor
    )
    _, grad, _, _ = hypergradient(problem, x0, y0, data=data, throw=False)
    return rho, gamma * tree_norm(grad), radius


class BOREP(AbstractBilevelAlgorithm):
    r"""BO-REP (Hao, Gong, Liu, "Bilevel optimization under unbounded smoothness: a
    new algorithm and convergence analysis", ICLR 2024), for upper levels whose
    smoothness grows with the gradient norm (recurrent networks).

    - Initialisation refinement (in `init`): `refine_steps` SGD steps on
      `g(x₀, ·)` from `y₀`.
    - Periodic updates: at iterations `t` with `t mod period = 0`, `t > 0`,
      `y ← periodic_steps` SGD steps on `g(x_t, ·)` (step `ρ`); `y` is left alone
      otherwise.
    - Every iteration, at `(x, y, v)` with fresh minibatches:

          D_x = ∇_x f + ∇²_xy g v,     v ← Π_{‖v‖ <= r}(v - ρ (∇²_yy g v + ∇_y f)),
          m ← β m + (1 - β) D_x,       x ← x - η m / ‖m‖.

    The normalised step bounds the move of `x` whatever the gradient's size,
    which is what the analysis under `(L₀, L₁)`-smoothness needs. With a constant
    `η` the iterates settle in a neighbourhood of size about `η` (the method's
    design); `step_decay < 1` shrinks `η` geometrically (`η_t = η · step_decay^t`)
    for high accuracy.

    **Arguments:**

    - `lr_inner`: `ρ = lr_inner/ℓ_g` (default 0.5).
    - `lr_outer`: `η = lr_outer ‖∇h(x₀)‖/ℓ_h` (default 0.1): the first normalised
      step has the length of a gradient step `lr_outer/ℓ_h`.
    - `momentum`: `β` (default 0.9); `step_decay` (default 1: constant).
    - `period` (default 2), `periodic_steps` (default 3), `refine_steps`
      (default 100).
    - `radius`, `radius_factor`: the adjoint's ball, as in `MASOBA`.
    - `batch_size`: minibatch size (`None`: whole data).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.BOREP(step_decay=0.98).run(problem, x0, y0, num_steps=300)
    >>> print(result.x.round(2))  # the solution is x = 0.5
    [0.5 0.5]

    ```
    """

    lr_inner: float = 0.5
    lr_outer: float = 0.1
    momentum: float = 0.9
    step_decay: float = 1.0
    period: int = 2
    periodic_steps: int = 3
    refine_steps: int = 100
    radius: float | None = None
    radius_factor: float = 10.0
    batch_size: int | None = None

    def __check_init__(self):
        if not (0 <= self.momentum < 1 and 0 < self.step_decay <= 1):
            raise ValueError(
                "BOREP needs 0 <= `momentum` < 1 and 0 < `step_decay` <= 1; got "
                f"{self.momentum!r}, {self.step_decay!r}."
            )
        if self.period < 1:
            raise ValueError(f"`period` must be >= 1, got {self.period!r}.")

    def init(self, problem, x0, y0, data: BilevelData, key):
        rho, eta, radius = bo_rep_constants(
            problem, x0, y0, data, self.lr_inner, self.lr_outer, self.radius_factor
        )
        radius = radius if self.radius is None else self.radius
        keys = jax.random.split(key, self.refine_steps)
        y = _sgd(problem, x0, y0, rho, data, keys, self.batch_size)
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        zeros = lambda t: jtu.tree_map(jnp.zeros_like, t)
        cast = lambda a: jnp.asarray(a, dtype)
        return _BOREPState(
            x0,
            y,
            zeros(y0),
            zeros(x0),
            cast(rho),
            cast(eta),
            cast(radius),
            jnp.array(0),
        )

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state: _BOREPState, data: BilevelData, key: Array):
        """One BO-REP iteration (see the class docs)."""
        x, v = state.x, state.v
        k_y, k_g, k_f = jax.random.split(key, 3)
        y = jax.lax.cond(
            (state.k % self.period == 0) & (state.k > 0),
            lambda: _sgd(
                problem,
                x,
                state.y,
                state.rho,
                data,
                jax.random.split(k_y, self.periodic_steps),
                self.batch_size,
            ),
            lambda: state.y,
        )
        _, hvp, cross = inner_directions(
            problem, x, y, v, sample_batch(data.inner, k_g, self.batch_size)
        )
        f_x, f_y = outer_directions(
            problem, x, y, sample_batch(data.outer, k_f, self.batch_size)
        )
        d_v = jtu.tree_map(jnp.add, hvp, f_y)
        d_x = jtu.tree_map(jnp.add, f_x, cross)
        beta = self.momentum
        m = jtu.tree_map(lambda a, d: beta * a + (1 - beta) * d, state.momentum, d_x)
        norm = tree_norm(m)
        eta = state.eta * self.step_decay ** state.k.astype(state.eta.dtype)
        step = eta / jnp.where(norm > 0, norm, 1.0)
        new = _BOREPState(
            tree_axpy(-step, m, x),
            y,
            project_ball(tree_axpy(-state.rho, d_v, v), state.radius),
            m,
            state.rho,
            state.eta,
            state.radius,
            state.k + 1,
        )
        return new, StepInfo(tree_norm(d_x))
