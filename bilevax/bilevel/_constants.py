r"""Problem constants for scale-aware defaults of the first-order bilevel methods.

Internal API (shared by F2SA, the penalty method, LV-HBA and the other
first-order algorithms). Everything is evaluated at one point `(x, y)` on the whole
data, with Hessian-vector products and conjugate-gradient solves (no matrices):

- `top_eigenvalue(matvec, like)`: power iteration on a symmetric PSD map.
- `lipschitz_y(fn, x, y, batch)`: `ℓ = λ_max(∇²_yy fn)` (smoothness in `y`).
- `strong_convexity_y(g, x, y, batch)`: `μ = λ_min⁺(∇²_yy g)`, the smallest
  non-zero eigenvalue, by power iteration on the pseudo-inverse (CG solves started
  in the range of the Hessian: a singular lower level gives the curvature of the
  directions that are determined).
- `cross_lipschitz(g, x, y, batch)`: `‖∇²_xy g‖` (largest singular value).
- `outer_smoothness(problem, x, y, data)`: `L_h`, the largest eigenvalue of the
  Gauss-Newton part `[I; J]ᵀ ∇²f [I; J]` of the Hessian of `h(x) = f(x, y*(x))`,
  `J = -∇²_yy g⁺ ∇²_yx g` (exact for quadratic lower levels).
- `tracking_steps(lip_g, mu_g, rate)`: inner gradient steps per outer step
  for trackers of `y*(x)` (`κ_g / rate`, clipped to `[10, 1000]`).
- `estimate(problem, x, y, data) -> Constants`: all of them.
- `penalty_scale(lip_f, mu_g, dtype, stochastic)`: the value-function penalty
  `λ` whose bias `O(ℓ_f / (λ μ_g))` is below the dtype's `eps^{1/4}` (about 1e-4
  in float64, 2e-2 in float32), capped so that `λ (y - z)` keeps digits; 10
  `ℓ_f / μ_g` with minibatches.

Estimates from power iteration approach the largest eigenvalues from below, so
`top_eigenvalue` adds a 5% margin. All results are floored at a tiny positive
number and carry no gradient.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from ..implicit._linear_solve import _dominant_eigenvalue
from ..implicit._tree import tree_norm
from ._problem import BilevelData, BilevelProblem

_MARGIN = 1.05


class Constants(eqx.Module):
    """Problem constants at one point (see the module docs)."""

    lip_f: Array  # ℓ_f = λ_max(∇²_yy f)
    lip_g: Array  # ℓ_g = λ_max(∇²_yy g)
    mu_g: Array  # μ_g = smallest non-zero eigenvalue of ∇²_yy g
    cross_g: Array  # ‖∇²_xy g‖
    lip_h: Array  # Gauss-Newton smoothness of h(x) = f(x, y*(x))


def _floor(value: Array) -> Array:
    tiny = jnp.finfo(jnp.result_type(value)).tiny ** 0.5
    value = jnp.where(jnp.isfinite(value), value, tiny)
    return jax.lax.stop_gradient(jnp.maximum(value, tiny))


def top_eigenvalue(
    matvec: Callable[[PyTree[Array]], PyTree[Array]], like: PyTree[Array], steps=30
) -> Array:
    """`λ_max` of a symmetric positive semi-definite map on pytrees shaped like
    `like`, by `steps` power iterations, with a 5% margin (floored)."""
    operator = lx.FunctionLinearOperator(
        matvec, jax.eval_shape(lambda: like), lx.symmetric_tag
    )
    return _floor(_MARGIN * jnp.abs(_dominant_eigenvalue(operator, steps)))


def _hessian_y(fn, x, y, batch):
    grad = lambda y_: jax.grad(fn, argnums=1)(x, y_, batch)
    return lambda v: jax.jvp(grad, (y,), (v,))[1]


def lipschitz_y(fn: Callable, x, y, batch) -> Array:
    """`λ_max(∇²_yy fn(x, y, batch))`."""
    return top_eigenvalue(_hessian_y(fn, x, y, batch), y)


def _pseudo_solve(hessian, like, max_steps=1000):
    """`b ↦ ∇²⁺ b` by CG from zero (the minimum-norm solution for `b` in the range
    of a PSD Hessian); NaN-free even when CG does not converge."""
    operator = lx.FunctionLinearOperator(
        hessian,
        jax.eval_shape(lambda: like),
        (lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
    solver = lx.CG(rtol=1e-6, atol=1e-12, max_steps=max_steps)

    def solve(b):
        out = lx.linear_solve(operator, b, solver, throw=False).value
        return jtu.tree_map(lambda a: jnp.where(jnp.isfinite(a), a, 0), out)

    return solve


def strong_convexity_y(g: Callable, x, y, batch) -> Array:
    """`μ = λ_min⁺(∇²_yy g)` as `1 / λ_max(∇²_yy g⁺)`."""
    hessian = _hessian_y(g, x, y, batch)
    solve = _pseudo_solve(hessian, y)
    # power iteration on H⁺ from a start in the range of H
    leaves, treedef = jtu.tree_flatten(y)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    start = jtu.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, a.shape, a.dtype)
            for k, a in zip(keys, leaves, strict=True)
        ],
    )
    start = hessian(start)

    def body(_, v):
        w = solve(v)
        return jtu.tree_map(lambda a: a / jnp.maximum(tree_norm(w), 1e-30), w)

    v = jax.lax.fori_loop(0, 15, body, body(0, start))
    inverse = tree_norm(solve(v))
    return _floor(1.0 / (_MARGIN * inverse))


def cross_lipschitz(g: Callable, x, y, batch) -> Array:
    """`‖∇²_xy g(x, y, batch)‖`, the Lipschitz constant of `∇_y g` in `x`."""
    grad_y = lambda x_: jax.grad(g, argnums=1)(x_, y, batch)
    _, vjp = jax.vjp(grad_y, x)
    gram = lambda v: vjp(jax.jvp(grad_y, (x,), (v,))[1])[0]
    return jnp.sqrt(top_eigenvalue(gram, x))


def outer_smoothness(problem: BilevelProblem, x, y, data: BilevelData) -> Array:
    """`L_h = λ_max([I; J]ᵀ ∇²f [I; J])`, `J = -∇²_yy g⁺ ∇²_yx g`, at `(x, y)`
    (`y` should be near `y*(x)`)."""
    grad_y = lambda x_: jax.grad(problem.inner, argnums=1)(x_, y, data.inner)
    _, vjp = jax.vjp(grad_y, x)
    solve = _pseudo_solve(_hessian_y(problem.inner, x, y, data.inner), y)
    neg = lambda t: jtu.tree_map(jnp.negative, t)
    grad_f = jax.grad(lambda xy: problem.outer(*xy, data.outer))

    def gauss_newton(v):
        jv = neg(solve(jax.jvp(grad_y, (x,), (v,))[1]))
        wx, wy = jax.jvp(grad_f, ((x, y),), ((v, jv),))[1]
        return jtu.tree_map(jnp.add, wx, neg(vjp(solve(wy))[0]))

    return top_eigenvalue(gauss_newton, x)


def estimate(problem: BilevelProblem, x, y, data: BilevelData) -> Constants:
    """All the constants at `(x, y)` on the whole data (`y` near `y*(x)`)."""
    x, y = jax.lax.stop_gradient((x, y))
    return Constants(
        lip_f=lipschitz_y(problem.outer, x, y, data.outer),
        lip_g=lipschitz_y(problem.inner, x, y, data.inner),
        mu_g=strong_convexity_y(problem.inner, x, y, data.inner),
        cross_g=cross_lipschitz(problem.inner, x, y, data.inner),
        lip_h=outer_smoothness(problem, x, y, data),
    )


def penalty_scale(lip_f: Array, mu_g: Array, dtype, stochastic=False) -> Array:
    """`λ = C max(ℓ_f, μ_g) / μ_g` for the value-function penalty, `C =
    eps^{-1/4}`: the relative bias `ℓ_f / (λ μ_g)` of `y_λ` is `eps^{1/4}` (1e-4 in
    float64, 2e-2 in float32); the ratio `ℓ_f / μ_g` is capped at `eps^{-1/4}` so
    that `λ eps` stays small enough for `λ (y - z)` to keep digits. With
    minibatches (`stochastic`) `C = 10`: `λ` multiplies the noise of `y - z`, and
    the neighbourhood reached is dominated by the noise, not by a bias of 10%."""
    eps = jnp.finfo(dtype).eps
    ratio = jnp.maximum(lip_f, mu_g) / mu_g
    scale = 10.0 if stochastic else eps ** (-0.25)
    return scale * jnp.minimum(ratio, eps ** (-0.25))


def tracking_steps(lip_g: Array, mu_g: Array, rate: float, low=10, high=1000) -> Array:
    """Inner gradient steps (of size `rate/ℓ_g`) per outer step for the trackers
    of `y*(x)` to keep up with `x`: `κ_g / rate` (one contraction by `1/e`),
    clipped to `[low, high]`."""
    steps = jnp.ceil(lip_g / (mu_g * rate))
    return jnp.clip(steps, low, high).astype(jnp.int32)
