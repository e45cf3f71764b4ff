r"""SABA (Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022): SOBA with SAGA variance
reduction on all its directions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_axpy, tree_norm
from ._oracles import inner_directions, outer_directions
from ._problem import BilevelData, num_samples
from ._run import AbstractBilevelAlgorithm, StepInfo
from ._soba import soba_steps


class _Tables(eqx.Module):
    """SAGA memory: one row per sample of the level's data."""

    inner: tuple  # (∇_y g_i, ∇²_yy g_i v, ∇²_xy g_i v), leading axis n
    outer: tuple  # (∇_x f_j, ∇_y f_j), leading axis m


class _SABAState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    v: PyTree[Array]
    rho: Array
    gamma: Array
    tables: _Tables


def _rows(tree, n):
    return jtu.tree_map(lambda a: jnp.zeros((n, *jnp.shape(a)), a.dtype), tree)


def _sample(level_data, i):
    """The one-sample batch `i` of a level (`None` for a level without data)."""
    if level_data is None:
        return None
    return jtu.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, i, 1), level_data)


def _indices(level_data, key, batch_size):
    n = num_samples(level_data, "batched") or 1
    if batch_size is None:
        return jnp.arange(n)
    return jax.random.randint(key, (batch_size,), 0, n)


def _saga(new, table, idx):
    """`mean_B(new_i - table_i) + mean(table)`, and the table with rows `B` = new
    (rows drawn twice keep the last value; the mean is recomputed from the
    table)."""
    est = jtu.tree_map(
        lambda a, t: jnp.mean(a - t[idx], axis=0) + jnp.mean(t, axis=0), new, table
    )
    return est, jtu.tree_map(lambda t, a: t.at[idx].set(a), table, new)


class SABA(AbstractBilevelAlgorithm):
    r"""SABA (Dagréou, Ablin, Vaiter, Moreau, NeurIPS 2022): SOBA whose five
    stochastic quantities are SAGA estimates (Defazio, Bach, Lacoste-Julien 2014).

    For every inner sample `i` the memory holds the last `∇_y g_i`, `∇²_yy g_i v`,
    `∇²_xy g_i v` computed for it, and for every outer sample `j` the last
    `∇_x f_j`, `∇_y f_j` (memory initialised at zero). At each step, with an inner
    minibatch `B` and an outer minibatch `B'` (indices drawn uniformly with
    replacement), each quantity `φ` is estimated at the old point by

        φ̂ = mean_{i∈B} (φ_i(x, y, v) - memory_i) + mean_i memory_i,

    then the rows of `B` are overwritten; and

        y ← y - ρ ∇̂_y g,   v ← v - ρ (∇̂²_yy g v + ∇̂_y f),
        x ← x - γ (∇̂_x f + ∇̂²_xy g v).

    With constant steps the estimates' variance vanishes as the iterates
    converge: SABA converges to the solution (linearly on strongly convex
    problems), not to a noise floor.

    **Arguments:**

    - `lr_inner`, `lr_outer`: `ρ = lr_inner/ℓ_g`, `γ = lr_outer/ℓ_h` as in `SOBA`
      (defaults 0.5 and 0.1); or `inner_step`, `outer_step` directly.
    - `batch_size`: minibatch size of both levels (`None`: whole data).

    The memory costs `n (2 dim y + dim x) + m (dim y + dim x)` floats for `n`
    inner and `m` outer samples; a level without data counts as one sample.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> A = jax.random.normal(jax.random.key(0), (64, 2))  # 64 inner samples
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, a: 0.5 * jnp.sum((y - x) ** 2)
    ...     + jnp.mean((a - A.mean(0)) @ (y - x)),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> saba = bx.bilevel.SABA(batch_size=8)
    >>> result = saba.run(problem, x0, y0, (A, None), num_steps=1000)
    >>> print(result.x.round(3))  # the solution is x = 0.5
    [0.5 0.5]

    ```
    """

    lr_inner: float = 0.5
    lr_outer: float = 0.1
    inner_step: float | None = None
    outer_step: float | None = None
    batch_size: int | None = None

    def __check_init__(self):
        b = self.batch_size
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise TypeError(f"`batch_size` must be a positive int or None, got {b!r}.")

    def init(self, problem, x0, y0, data: BilevelData, key):
        rho, gamma = self.inner_step, self.outer_step
        if rho is None or gamma is None:
            rho_, gamma_ = soba_steps(
                problem, x0, y0, data, self.lr_inner, self.lr_outer
            )
            rho = rho_ if rho is None else rho
            gamma = gamma_ if gamma is None else gamma
        n = num_samples(data.inner, "inner") or 1
        m = num_samples(data.outer, "outer") or 1
        tables = _Tables(
            (_rows(y0, n), _rows(y0, n), _rows(x0, n)), (_rows(x0, m), _rows(y0, m))
        )
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        v0 = jtu.tree_map(jnp.zeros_like, y0)
        cast = lambda a: jnp.asarray(a, dtype)
        return _SABAState(x0, y0, v0, cast(rho), cast(gamma), tables)

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state: _SABAState, data: BilevelData, key: Array):
        """One SABA iteration (see the class docs)."""
        x, y, v = state.x, state.y, state.v
        k_in, k_out = jax.random.split(key)
        idx_in = _indices(data.inner, k_in, self.batch_size)
        idx_out = _indices(data.outer, k_out, self.batch_size)
        new_in = jax.vmap(
            lambda i: inner_directions(problem, x, y, v, _sample(data.inner, i))
        )(idx_in)
        new_out = jax.vmap(
            lambda j: outer_directions(problem, x, y, _sample(data.outer, j))
        )(idx_out)
        (g_y, hvp, cross), inner_table = _saga(new_in, state.tables.inner, idx_in)
        (f_x, f_y), outer_table = _saga(new_out, state.tables.outer, idx_out)
        d_v = jtu.tree_map(jnp.add, hvp, f_y)
        d_x = jtu.tree_map(jnp.add, f_x, cross)
        new = _SABAState(
            tree_axpy(-state.gamma, d_x, x),
            tree_axpy(-state.rho, g_y, y),
            tree_axpy(-state.rho, d_v, v),
            state.rho,
            state.gamma,
            _Tables(inner_table, outer_table),
        )
        return new, StepInfo(tree_norm(d_x))
