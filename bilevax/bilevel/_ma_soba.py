r"""MA-SOBA (Chen, Xu, Zhang, ICML 2023): SOBA with a moving average of the
hypergradient estimate and a bounded adjoint."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_axpy, tree_norm
from ._oracles import constants, outer_directions, project_ball, soba_directions
from ._problem import BilevelData
from ._run import AbstractBilevelAlgorithm, StepInfo


class _MASOBAState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    v: PyTree[Array]
    average: PyTree[Array]  # moving average of the x direction
    rho: Array
    gamma: Array
    radius: Array


def ma_soba_constants(problem, x0, y0, data, lr_inner, lr_outer, radius_factor):
    """Default `ρ = lr_inner/ℓ_g`, `γ = lr_outer/ℓ_h` and the adjoint's radius
    `r = radius_factor · ‖∇_y f(x0, y0)‖ / μ_g` (`‖v*‖ <= ‖∇_y f‖/μ_g`)."""
    c = constants(problem, x0, y0, data)
    _, f_y = outer_directions(problem, x0, y0, data.outer)
    radius = radius_factor * tree_norm(f_y) / c.mu_g
    return lr_inner / c.lip_g, lr_outer / c.lip_h, radius


class MASOBA(AbstractBilevelAlgorithm):
    r"""MA-SOBA (Chen, Xu, Zhang, "Optimal algorithms for stochastic bilevel
    optimization under relaxed smoothness conditions", ICML 2023): SOBA's three
    stochastic directions at the old point (`D_y = ∇_y g`, `D_v = ∇²_yy g v + ∇_y f`,
    `D_x = ∇_x f + ∇²_xy g v`, independent minibatches as in `SOBA`), a moving
    average of the `x` direction, and the adjoint kept in a ball:

        y ← y - ρ D_y
        v ← Π_{‖v‖ <= r}(v - ρ D_v)
        h ← (1 - θ) h + θ D_x,     h₀ = 0
        x ← x - γ h

    (all right-hand sides at the old `(x, y, v)`; `x` moves along the updated
    average). The average filters the noise of `D_x` without second-order
    smoothness of the lower level, giving the optimal `O(ε⁻²)` sample complexity
    with constant steps `γ, ρ, θ ∝ 1/√T`.

    **Arguments:**

    - `lr_inner`, `lr_outer`: `ρ = lr_inner/ℓ_g`, `γ = lr_outer/ℓ_h` as in `SOBA`
      (defaults 0.5 and 0.1); or `inner_step`, `outer_step` directly.
    - `averaging`: `θ` (default 0.1).
    - `radius`: `r`; default `radius_factor · ‖∇_y f(x0, y0)‖ / μ_g`
      (`radius_factor` default 10), from `‖v*‖ <= ‖∇_y f‖/μ_g` with `μ_g` the
      strong convexity of `g` in `y` estimated at the start.
    - `batch_size`: minibatch size of every oracle (`None`: whole data).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.MASOBA().run(problem, x0, y0, num_steps=500)
    >>> print(result.x.round(3))  # the solution is x = 0.5
    [0.5 0.5]

    ```
    """

    lr_inner: float = 0.5
    lr_outer: float = 0.1
    inner_step: float | None = None
    outer_step: float | None = None
    averaging: float = 0.1
    radius: float | None = None
    radius_factor: float = 10.0
    batch_size: int | None = None

    def __check_init__(self):
        if not 0 < self.averaging <= 1:
            raise ValueError(f"`averaging` must be in (0, 1], got {self.averaging!r}.")

    def init(self, problem, x0, y0, data: BilevelData, key):
        given = (self.inner_step, self.outer_step, self.radius)
        rho, gamma, radius = given
        if None in given:
            rho_, gamma_, radius_ = ma_soba_constants(
                problem, x0, y0, data, self.lr_inner, self.lr_outer, self.radius_factor
            )
            rho = rho_ if rho is None else rho
            gamma = gamma_ if gamma is None else gamma
            radius = radius_ if radius is None else radius
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        zeros = lambda t: jtu.tree_map(jnp.zeros_like, t)
        cast = lambda a: jnp.asarray(a, dtype)
        return _MASOBAState(
            x0, y0, zeros(y0), zeros(x0), cast(rho), cast(gamma), cast(radius)
        )

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state: _MASOBAState, data: BilevelData, key: Array):
        """One MA-SOBA iteration (see the class docs)."""
        d_y, d_v, d_x = soba_directions(
            problem, state.x, state.y, state.v, data, key, self.batch_size
        )
        theta = self.averaging
        average = jtu.tree_map(
            lambda h, d: (1 - theta) * h + theta * d, state.average, d_x
        )
        new = _MASOBAState(
            tree_axpy(-state.gamma, average, state.x),
            tree_axpy(-state.rho, d_y, state.y),
            project_ball(tree_axpy(-state.rho, d_v, state.v), state.radius),
            average,
            state.rho,
            state.gamma,
            state.radius,
        )
        return new, StepInfo(tree_norm(average))
