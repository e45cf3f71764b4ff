"""Ready-made optimality conditions `F(y, *params) = 0` for `custom_root`.

Each function returns an `OptimalityCondition`: a callable `F(y, *params)` that
carries lineax tags describing its Jacobian `∂F/∂y` (for example symmetric positive
semidefinite for the gradient of a convex function). `custom_root` reads the tags to
choose a default adjoint solver (CG for symmetric PSD, GMRES otherwise).

Example:

```python
>>> import jax.numpy as jnp
>>> from bilevax.implicit import conditions
>>> f = lambda y, lam: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * lam * jnp.sum(y**2)
>>> F = conditions.stationarity(f)
>>> F(jnp.array([0.5, 0.5]), 1.0).tolist()
[0.0, 0.0]

```
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import PyTree

from ._tree import same_shapes

_SPD = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})


class OptimalityCondition(eqx.Module):
    """A function `F(y, *params)` whose zero characterises a solution `y*(params)`.

    **Attributes:**

    - `fn`: the function `F(y, *params) -> pytree like y`.
    - `tags`: lineax tags true of `∂F/∂y` at a solution (e.g.
      `lineax.symmetric_tag`, `lineax.positive_semidefinite_tag`).

    Example:

    ```python
    >>> import jax.numpy as jnp, lineax as lx
    >>> from bilevax.implicit import conditions, custom_root
    >>> F = conditions.OptimalityCondition(lambda y, a: y**3 - a)  # y* = a^(1/3)
    >>> cube_root = custom_root(F)(lambda init, a: jnp.cbrt(a))
    >>> import jax
    >>> round(float(jax.grad(cube_root, argnums=1)(None, 8.0)), 4)  # 1 / (3 y*²)
    0.0833

    ```
    """

    fn: Callable[..., PyTree]
    tags: frozenset[Any] = frozenset()

    def __call__(self, y, *params, **kwargs):
        return self.fn(y, *params, **kwargs)


def stationarity(
    objective: Callable[..., Any],
    tags: frozenset[Any] = _SPD,
    *,
    has_aux: bool = False,
) -> OptimalityCondition:
    r"""First-order condition of unconstrained minimisation: `F(y, *p) = ∇_y f(y, *p)`.

    **Arguments:**

    - `objective`: `f(y, *params) -> scalar`, minimised over the pytree `y`.
    - `tags`: tags of the Jacobian `∇²_y f`. Defaults to symmetric positive
      semidefinite, true at a local minimum; pass `frozenset({lineax.symmetric_tag})`
      for a saddle point (then the default adjoint solver is GMRES).
    - `has_aux`: `objective` returns `(value, aux)`; `aux` is ignored.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import conditions, custom_root
    >>> f = lambda y, a: 0.5 * jnp.sum((y - a) ** 2) + 0.5 * jnp.sum(y**2)  # y* = a/2
    >>> solve = custom_root(conditions.stationarity(f))(lambda init, a: a / 2)
    >>> print(jax.jacobian(solve, argnums=1)(None, jnp.ones(2)) + 0.0)
    [[0.5 0. ]
     [0.  0.5]]

    ```
    """
    return OptimalityCondition(
        _without_aux(jax.grad(objective, has_aux=has_aux), has_aux), frozenset(tags)
    )


def _without_aux(fn: Callable[..., Any], has_aux: bool) -> Callable[..., Any]:
    """`fn` with the `aux` of its `(output, aux)` dropped when `has_aux`."""
    if not has_aux:
        return fn
    return lambda *args, **kwargs: fn(*args, **kwargs)[0]


def _leading_param(args, kwargs, keyword):
    """The set/prox parameter of a condition called `F(y, θ, *args)` or, as jaxopt's
    conditions are, `F(y, *args, keyword=θ)`."""
    if keyword in kwargs:
        kwargs = dict(kwargs)
        return kwargs.pop(keyword), args, kwargs
    if not args:
        raise TypeError(
            f"The condition needs its parameter `{keyword}` (positionally after `y`, "
            "or by that keyword)."
        )
    return args[0], args[1:], kwargs


def _gradient_step(objective, stepsize, y, params, kwargs, has_aux):
    grad = _without_aux(jax.grad(objective, has_aux=has_aux), has_aux)(
        y, *params, **kwargs
    )
    return jtu.tree_map(lambda a, g: a - stepsize * g, y, grad)


def prox_gradient(
    objective: Callable[..., Any],
    prox: Callable[[PyTree, Any, float], PyTree],
    stepsize: float = 1.0,
    *,
    has_aux: bool = False,
) -> OptimalityCondition:
    r"""Fixed point of proximal gradient descent, for `min_y f(y, *args) + g(y, θ)`.

    $$F(y, θ, *args) = \operatorname{prox}_{η g(\cdot, θ)}
        \big(y - η ∇_y f(y, *args)\big) - y.$$

    `F(y*) = 0` exactly at the minimisers of `f + g` for any `η > 0`.

    **Arguments:**

    - `objective`: the smooth part `f(y, *args) -> scalar`.
    - `prox`: `prox(v, θ, η) -> argmin_u ½‖u - v‖² + η g(u, θ)` (the convention of
      `jaxopt.prox`, whose operators can be passed directly).
    - `stepsize`: `η`. Any positive value characterises the same solutions; values
      near `1/L` (`L` the gradient's Lipschitz constant) give a better-conditioned
      adjoint system.

    - `has_aux`: `objective` returns `(value, aux)`; `aux` is ignored.

    The returned condition is called as `F(y, θ, *args)`: the prox parameters come
    first, then the arguments of `f`; or, as jaxopt's `ProximalGradient`, with
    `θ` as the keyword `hyperparams_prox`: `F(y, *args, hyperparams_prox=θ)`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import conditions, custom_root
    >>> f = lambda y: 0.5 * jnp.sum((y - jnp.array([3.0, 0.2])) ** 2)
    >>> soft = lambda v, lam, eta: jnp.sign(v) * jnp.maximum(jnp.abs(v) - eta * lam, 0)
    >>> F = conditions.prox_gradient(f, soft, stepsize=1.0)
    >>> lasso = custom_root(F)(lambda init, lam: soft(jnp.array([3.0, 0.2]), lam, 1.0))
    >>> print(lasso(None, 1.0), jax.jacobian(lasso, argnums=1)(None, 1.0) + 0.0)
    [2. 0.] [-1.  0.]

    ```
    """

    def fn(y, *args, **kwargs):
        theta, args, kwargs = _leading_param(args, kwargs, "hyperparams_prox")
        v = _gradient_step(objective, stepsize, y, args, kwargs, has_aux)
        return jtu.tree_map(lambda p, a: p - a, prox(v, theta, stepsize), y)

    return OptimalityCondition(fn)


def projected_gradient(
    objective: Callable[..., Any],
    projection: Callable[[PyTree, Any], PyTree],
    stepsize: float = 1.0,
    *,
    has_aux: bool = False,
) -> OptimalityCondition:
    r"""Fixed point of projected gradient descent, for `min_{y ∈ C(θ)} f(y, *args)`.

    $$F(y, θ, *args) = Π_{C(θ)}\big(y - η ∇_y f(y, *args)\big) - y.$$

    **Arguments:**

    - `objective`: `f(y, *args) -> scalar`.
    - `projection`: `projection(v, θ) -> Π_{C(θ)}(v)`, Euclidean projection onto a
      convex set parametrised by `θ` (e.g. a box with bounds `θ`).
    - `stepsize`: `η > 0`.

    - `has_aux`: `objective` returns `(value, aux)`; `aux` is ignored.

    The returned condition is called as `F(y, θ, *args)`, or, as jaxopt's
    `ProjectedGradient`, `F(y, *args, hyperparams_proj=θ)`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import conditions, custom_root
    >>> f = lambda y: 0.5 * jnp.sum((y - jnp.array([2.0, 0.5])) ** 2)
    >>> box = lambda v, upper: jnp.clip(v, 0.0, upper)  # C(θ) = [0, θ]²
    >>> F = conditions.projected_gradient(f, box)
    >>> solve = custom_root(F)(lambda init, upper: box(jnp.array([2.0, 0.5]), upper))
    >>> print(solve(None, 1.0), jax.jacobian(solve, argnums=1)(None, 1.0))
    [1.  0.5] [1. 0.]

    ```
    """

    def fn(y, *args, **kwargs):
        theta, args, kwargs = _leading_param(args, kwargs, "hyperparams_proj")
        v = _gradient_step(objective, stepsize, y, args, kwargs, has_aux)
        return jtu.tree_map(lambda p, a: p - a, projection(v, theta), y)

    return OptimalityCondition(fn)


def fixed_point(
    map_: Callable[..., PyTree], *, has_aux: bool = False
) -> OptimalityCondition:
    """The condition `F(y, *p) = T(y, *p) - y` of a fixed point of `T`.

    With `has_aux`, `map_` returns `(T(y, *p), aux)` and `aux` is ignored.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import conditions, custom_root
    >>> T = lambda y, a: 0.5 * (y + a / y)  # Newton's map for sqrt(a)
    >>> sqrt = custom_root(conditions.fixed_point(T))(lambda init, a: jnp.sqrt(a))
    >>> round(float(jax.grad(sqrt, argnums=1)(None, 4.0)), 4)  # 1 / (2 sqrt(a))
    0.25

    ```
    """

    def fn(y, *params, **kwargs):
        image = _without_aux(map_, has_aux)(y, *params, **kwargs)
        if not same_shapes(image, y):
            shapes = lambda t: jtu.tree_map(jnp.shape, t)
            raise ValueError(
                f"The fixed-point map must return a pytree like `y`: `y` has shapes "
                f"{shapes(y)}, `T(y, ...)` {shapes(image)}."
            )
        return jtu.tree_map(lambda t, a: t - a, image, y)

    return OptimalityCondition(fn)


def kkt(
    objective: Callable[..., Any],
    eq: Callable[..., Any] | None = None,
    ineq: Callable[..., Any] | None = None,
) -> OptimalityCondition:
    r"""KKT conditions of `min_y f(y, θ)` s.t. `c(y, θ) = 0`, `h(y, θ) <= 0`, as a
    root condition in `(y, multipliers)`:

    $$F = \big(\nabla_y f + G_c^\top λ + G_h^\top μ,\; c,\;
    \mathrm{where}(μ > 0,\, h,\, μ)\big),$$

    `multipliers = {"eq": λ, "ineq": μ}` (keys present for the constraint kinds
    given). Active-set aware: an inequality with `μ_i > 0` is held as an equality
    `h_i = 0`, one with `μ_i = 0` keeps its multiplier at zero (strict
    complementarity is assumed at the solution). The Jacobian is indefinite, and
    symmetric only without inequalities (an inactive row is not the transpose of
    its column): solve its systems with `lineax.LU()` or GMRES.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, lineax as lx
    >>> from bilevax.implicit import conditions, custom_root
    >>> f = lambda y, a: 0.5 * jnp.sum((y - a) ** 2)
    >>> F = conditions.kkt(f, eq=lambda y, a: jnp.array([jnp.sum(y) - 1.0]))
    >>> def project(init, a):  # onto the plane sum(y) = 1, with its multiplier
    ...     lam = (jnp.sum(a) - 1.0) / a.size
    ...     return a - lam, {"eq": jnp.array([lam])}
    >>> solve = custom_root(F, lx.LU())(project)
    >>> print(jax.jacobian(lambda a: solve(None, a)[0])(jnp.array([1.0, 2.0])))
    [[ 0.5 -0.5]
     [-0.5  0.5]]

    ```
    """

    def fn(z, *params, **kwargs):
        y, multipliers = z

        def lagrangian(y_):
            value = objective(y_, *params, **kwargs)
            if eq is not None:
                value = value + multipliers["eq"] @ eq(y_, *params, **kwargs)
            if ineq is not None:
                value = value + multipliers["ineq"] @ ineq(y_, *params, **kwargs)
            return value

        out = {}
        if eq is not None:
            out["eq"] = eq(y, *params, **kwargs)
        if ineq is not None:
            mu = multipliers["ineq"]
            out["ineq"] = jnp.where(mu > 0, ineq(y, *params, **kwargs), mu)
        return jax.grad(lagrangian)(y), out

    tags = frozenset({lx.symmetric_tag}) if ineq is None else frozenset()
    return OptimalityCondition(fn, tags)


__all__ = [
    "OptimalityCondition",
    "fixed_point",
    "kkt",
    "projected_gradient",
    "prox_gradient",
    "stationarity",
]
