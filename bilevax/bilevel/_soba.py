r"""SOBA (Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022): the stochastic single-loop
bilevel method with a linear-system adjoint."""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_axpy, tree_norm
from ._oracles import constants, decayed, soba_directions
from ._problem import BilevelData
from ._run import AbstractBilevelAlgorithm, StepInfo


class _SOBAState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    v: PyTree[Array]
    rho: Array  # base step of y and v
    gamma: Array  # base step of x
    k: Array


def soba_steps(problem, x0, y0, data, lr_inner, lr_outer) -> tuple[Array, Array]:
    """Default base steps `ρ = lr_inner/ℓ_g`, `γ = lr_outer/ℓ_h` (constants of the
    problem estimated at the start; see `bilevax.bilevel._oracles`)."""
    c = constants(problem, x0, y0, data)
    return lr_inner / c.lip_g, lr_outer / c.lip_h


class SOBA(AbstractBilevelAlgorithm):
    r"""SOBA (Dagréou, Ablin, Vaiter, Moreau, "A framework for bilevel optimization
    that enables stochastic and global variance reduction algorithms", NeurIPS
    2022): one stochastic step on each of `y`, the adjoint `v` and `x` per
    iteration, all at the old point `(x, y, v)`:

        y ← y - ρ_t ∇_y g(x, y; B₁)
        v ← v - ρ_t (∇²_yy g(x, y; B₂) v + ∇_y f(x, y; B₃))
        x ← x - γ_t (∇_x f(x, y; B₃) + ∇²_xy g(x, y; B₂) v)

    `v` tracks `-[∇²_yy g]⁻¹ ∇_y f` (the solution of the linear system, by SGD on
    `½ vᵀ∇²_yy g v + ∇_y fᵀ v`), so the `x` direction is an unbiased estimate of
    the hypergradient at `(y, v)`. `B₁`, `B₂` are independent inner minibatches
    (the Hessian- and cross-vector products share `B₂`: one VJP), `B₃` an outer
    minibatch. Steps `ρ_t = ρ (t+1)^(-inner_decay)`, `γ_t = γ (t+1)^(-outer_decay)`
    (the paper's theory: exponents 2/5 and 3/5; constant steps give a noise floor
    that shrinks with the batch size).

    **Arguments:**

    - `lr_inner`, `lr_outer`: `ρ = lr_inner/ℓ_g` and `γ = lr_outer/ℓ_h`, with
      `ℓ_g` the smoothness of `g` in `y` and `ℓ_h` that of `h(x) = f(x, y*(x))`,
      estimated at the start by power iteration (defaults 0.5 and 0.1: the single
      loop needs `x` to move slower than `y` and `v` track it; 0.5 for both
      diverges on the quadratic test problem).
    - `inner_step`, `outer_step`: give `ρ`, `γ` directly instead.
    - `inner_decay`, `outer_decay`: step exponents (default 0: constant).
    - `batch_size`: minibatch size of every oracle (`None`: whole data,
      deterministic).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.SOBA().run(problem, x0, y0, num_steps=300)
    >>> print(result.x.round(3))  # the solution is x = 0.5
    [0.5 0.5]

    ```
    """

    lr_inner: float = 0.5
    lr_outer: float = 0.1
    inner_step: float | None = None
    outer_step: float | None = None
    inner_decay: float = 0.0
    outer_decay: float = 0.0
    batch_size: int | None = None

    def init(self, problem, x0, y0, data: BilevelData, key):
        rho, gamma = soba_steps(problem, x0, y0, data, self.lr_inner, self.lr_outer)
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        rho = rho if self.inner_step is None else self.inner_step
        gamma = gamma if self.outer_step is None else self.outer_step
        v0 = jtu.tree_map(jnp.zeros_like, y0)
        cast = lambda a: jnp.asarray(a, dtype)
        return _SOBAState(x0, y0, v0, cast(rho), cast(gamma), jnp.array(0))

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state: _SOBAState, data: BilevelData, key: Array):
        """One SOBA iteration (see the class docs)."""
        d_y, d_v, d_x = soba_directions(
            problem, state.x, state.y, state.v, data, key, self.batch_size
        )
        rho = decayed(state.rho, state.k, self.inner_decay)
        gamma = decayed(state.gamma, state.k, self.outer_decay)
        new = _SOBAState(
            tree_axpy(-gamma, d_x, state.x),
            tree_axpy(-rho, d_y, state.y),
            tree_axpy(-rho, d_v, state.v),
            state.rho,
            state.gamma,
            state.k + 1,
        )
        return new, StepInfo(tree_norm(d_x))
