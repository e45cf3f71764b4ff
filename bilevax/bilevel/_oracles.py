r"""Oracles and problem constants shared by the single-loop stochastic methods
(SOBA, SABA, MA-SOBA, BO-REP, BOME, MAID).

Sign convention: the adjoint `v` tracks `v*(x) = -[∇²_yy g]⁻¹ ∇_y f`, so that the
hypergradient is `∇h(x) = ∇_x f + ∇²_xy g · v*`.

The constants (`ℓ_g`: smoothness of `g` in `y`; `μ_g`: its strong convexity;
`ℓ_h`: smoothness of `h(x) = f(x, y*(x))`) are estimated once at the start by
power iteration on Hessian-vector products (the `smoothness` helper). `ℓ_h` is
that of the Gauss-Newton model `x ↦ f(x, y* + J (x - x0))`, `J = dy*/dx` (the
terms with third derivatives of `g` are left out; exact for quadratic `g`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_dot
from ._inner import GradientDescent, smoothness
from ._problem import BilevelData, sample_batch


class Constants(eqx.Module):
    """Estimates at the start: `ℓ_g`, `μ_g` (in `y`) and `ℓ_h` (in `x`)."""

    lip_g: Array
    mu_g: Array
    lip_h: Array


def strong_convexity(fn, y: PyTree[Array], lip: Array) -> Array:
    """`μ = ℓ - λ_max(ℓ I - ∇²fn(y))` by power iteration (floored at `ℓ/1e4`)."""
    shifted = lambda w: 0.5 * lip * tree_dot(w, w) - fn(w)
    return jnp.maximum(lip - smoothness(shifted, y), 1e-4 * lip)


def _tree_add(a, b):
    return jtu.tree_map(jnp.add, a, b)


def outer_smoothness(problem, x0, y_star, data: BilevelData) -> Array:
    """`ℓ_h` of the Gauss-Newton model of `h` at `x0` (see the module docs)."""
    g = lambda x, y: problem.inner(x, y, data.inner)
    grad_y = jax.grad(g, argnums=1)
    hessian = lx.FunctionLinearOperator(
        lambda v: jax.jvp(lambda y: grad_y(x0, y), (y_star,), (v,))[1],
        jax.eval_shape(lambda: y_star),
        (lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    solver = lx.CG(rtol=1e-4, atol=1e-4, max_steps=100)

    def model(x):
        dx = jtu.tree_map(jnp.subtract, x, x0)
        cross = jax.jvp(lambda x_: grad_y(x_, y_star), (x0,), (dx,))[1]
        rhs = jtu.tree_map(jnp.negative, cross)
        dy = lx.linear_solve(hessian, rhs, solver, throw=False).value
        return problem.outer(x, _tree_add(y_star, dy), data.outer)

    return smoothness(model, x0)


def constants(problem, x0, y0, data: BilevelData, inner_steps: int = 500):
    """The `Constants` at `(x0, y*(x0))`; `y*` by `inner_steps` gradient steps."""
    g = lambda x, y: problem.inner(x, y, data.inner)
    lip_g = smoothness(lambda y: g(x0, y), y0)
    dtype = jnp.result_type(*jtu.tree_leaves(x0))
    tol = jnp.finfo(dtype).eps ** 0.5
    y_star, _ = GradientDescent(inner_steps, 1.0 / lip_g).solve(g, y0, x0, tol)
    y_star = jax.lax.stop_gradient(y_star)
    mu_g = strong_convexity(lambda y: g(x0, y), y_star, lip_g)
    lip_h = outer_smoothness(problem, x0, y_star, data)
    return Constants(lip_g, mu_g, jax.lax.stop_gradient(lip_h))


def inner_directions(problem, x, y, v, batch):
    """`(∇_y g, ∇²_yy g · v, ∇²_xy g · v)` on one inner batch (one VJP of `∇_y g`)."""
    grad_y = lambda x_, y_: jax.grad(problem.inner, argnums=1)(x_, y_, batch)
    grad, vjp = jax.vjp(grad_y, x, y)
    cross, hvp = vjp(v)
    return grad, hvp, cross


def outer_directions(problem, x, y, batch):
    """`(∇_x f, ∇_y f)` on one outer batch."""
    return jax.grad(problem.outer, argnums=(0, 1))(x, y, batch)


def soba_directions(problem, x, y, v, data: BilevelData, key, batch_size):
    """SOBA's three directions at `(x, y, v)`, with independent minibatches for
    `∇_y g`, for `(∇²_yy g v, ∇²_xy g v)` (one batch) and for `(∇_x f, ∇_y f)`:
    `D_y = ∇_y g`, `D_v = ∇²_yy g v + ∇_y f`, `D_x = ∇_x f + ∇²_xy g v`."""
    k_y, k_v, k_f = jax.random.split(key, 3)
    d_y = jax.grad(problem.inner, argnums=1)(
        x, y, sample_batch(data.inner, k_y, batch_size)
    )
    _, hvp, cross = inner_directions(
        problem, x, y, v, sample_batch(data.inner, k_v, batch_size)
    )
    f_x, f_y = outer_directions(
        problem, x, y, sample_batch(data.outer, k_f, batch_size)
    )
    return d_y, _tree_add(hvp, f_y), _tree_add(f_x, cross)


def decayed(step: Array, k: Array, decay: float) -> Array:
    """`step · (k + 1)^(-decay)`."""
    return step * (k + 1.0) ** (-decay)


def project_ball(v: PyTree[Array], radius: Array) -> PyTree[Array]:
    """Euclidean projection onto `{‖v‖ <= radius}`."""
    norm = jnp.sqrt(tree_dot(v, v))
    scale = jnp.minimum(1.0, radius / jnp.where(norm > 0, norm, 1.0))
    return jtu.tree_map(lambda a: a * scale, v)
