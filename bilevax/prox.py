r"""Proximal operators and projections, for `conditions.prox_gradient` and
`bilevel.ProximalGradient`.

Every operator has the signature `prox(v, θ, η)` and returns

$$\operatorname{prox}_{η g(\cdot, θ)}(v) = \operatorname{argmin}_u\;
    \tfrac12 \|u - v\|^2 + η\, g(u, θ),$$

the convention of `jaxopt.prox` (the projections ignore `η`: the prox of an
indicator is the projection whatever the step). `θ` may be a scalar or an array
broadcast against `v` (one strength per coordinate, e.g. a weighted Lasso). All are
differentiable almost everywhere in `v` and `θ` by JAX's autodiff (their Jacobians
are the a.e. derivatives used by implicit differentiation); at a kink they take a
one-sided derivative.

- `l1`: soft thresholding, `g(u, θ) = Σ θ_i |u_i|`.
- `elastic_net`: `g(u, (θ₁, θ₂)) = Σ θ₁ |u_i| + θ₂/2 u_i²` (scikit-learn's
  `ElasticNet` is `θ₁ = α ρ`, `θ₂ = α (1 - ρ)` with `ρ = l1_ratio`).
- `group_l1`: block soft thresholding, `g(u, θ) = Σ_g θ_g ‖u_g‖₂`, groups along
  the last axis of `v`.
- `non_negative_l1`: `g(u, θ) = Σ θ_i u_i` on `u >= 0`.
- `box`, `simplex`, `l1_ball`, `l2_ball`: projections (optax's).
"""

import jax.numpy as jnp
import optax.projections as projections
from jaxtyping import Array, ArrayLike


def _theta(theta, name: str, default=None):
    """`theta`, or `default` for `None` (jaxopt's `hyperparams=None`); a clear
    error where there is no default."""
    if theta is not None:
        return theta
    if default is None:
        raise TypeError(f"`bilevax.prox.{name}`: `theta` is required (got None).")
    return default


def l1(v: Array, theta: ArrayLike, eta: ArrayLike = 1.0) -> Array:
    r"""Soft thresholding, the prox of `Σ_i θ_i |u_i|`:
    `u_i = sign(v_i) max(|v_i| - η θ_i, 0)`.

    **Arguments:** `v` (any shape), `theta` (`>= 0`, scalar or broadcast against
    `v` for per-coordinate weights), `eta` (step `> 0`). **Returns** an array like
    `v`. Jacobian in `v`: `diag(|v_i| > η θ_i)`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.prox.l1(jnp.array([3.0, -0.5, -2.0]), 1.0))
    [ 2. -0. -1.]
    >>> print(bx.prox.l1(jnp.array([3.0, -0.5, -2.0]), jnp.array([0.0, 1.0, 3.0])))
    [ 3. -0. -0.]

    ```
    """
    theta = _theta(theta, "l1")
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - eta * theta, 0.0)


def elastic_net(v: Array, theta: tuple, eta: ArrayLike = 1.0) -> Array:
    r"""Prox of the elastic net `Σ_i θ₁ |u_i| + θ₂/2 u_i²` with `theta = (θ₁, θ₂)`:
    `u = l1(v, θ₁, η) / (1 + η θ₂)`.

    scikit-learn's `ElasticNet(alpha, l1_ratio)` penalty is
    `θ₁ = alpha·l1_ratio`, `θ₂ = alpha·(1 - l1_ratio)`. Each of `θ₁`, `θ₂` may be a
    scalar or broadcast against `v`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.prox.elastic_net(jnp.array([3.0, -0.5]), (1.0, 1.0)))
    [ 1. -0.]

    ```
    """
    theta = _theta(theta, "elastic_net")
    theta1, theta2 = theta
    return l1(v, theta1, eta) / (1.0 + eta * theta2)


def group_l1(v: Array, theta: ArrayLike, eta: ArrayLike = 1.0) -> Array:
    r"""Block soft thresholding, the prox of the group Lasso `Σ_g θ_g ‖u_g‖₂`,
    with the groups along the last axis of `v` (shape `(..., group_size)`):
    `u_g = max(1 - η θ_g / ‖v_g‖, 0) v_g`.

    `theta` is a scalar or has shape `v.shape[:-1]` (one weight per group). A group
    with `v_g = 0` maps to 0 with a zero derivative.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> v = jnp.array([[3.0, 4.0], [0.3, 0.4]])  # two groups, norms 5 and 0.5
    >>> print(bx.prox.group_l1(v, 1.0))
    [[2.4 3.2]
     [0.  0. ]]

    ```
    """
    theta = _theta(theta, "group_l1")
    squared = jnp.sum(v**2, axis=-1, keepdims=True)
    safe = jnp.sqrt(jnp.where(squared > 0, squared, 1.0))  # no NaN derivative at 0
    theta = jnp.expand_dims(jnp.asarray(theta), -1)
    return jnp.maximum(1.0 - eta * theta / safe, 0.0) * v


def non_negative_l1(v: Array, theta: ArrayLike, eta: ArrayLike = 1.0) -> Array:
    r"""Prox of `Σ_i θ_i u_i + ι(u >= 0)` (the non-negative Lasso):
    `u_i = max(v_i - η θ_i, 0)`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.prox.non_negative_l1(jnp.array([3.0, -0.5, 1.5]), 1.0))
    [2.  0.  0.5]

    ```
    """
    theta = _theta(theta, "non_negative_l1")
    return jnp.maximum(v - eta * theta, 0.0)


def box(v: Array, theta: tuple, eta: ArrayLike = 1.0) -> Array:
    r"""Projection onto the box `lower <= u <= upper`, `theta = (lower, upper)`
    (each scalar or broadcast against `v`); `eta` is ignored.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.prox.box(jnp.array([3.0, -0.5, 0.2]), (0.0, 1.0)))
    [1.  0.  0.2]

    ```
    """
    theta = _theta(theta, "box")
    lower, upper = theta
    return projections.projection_box(v, lower, upper)


def simplex(v: Array, theta: ArrayLike = 1.0, eta: ArrayLike = 1.0) -> Array:
    r"""Projection onto the simplex `{u >= 0, Σ u = θ}` of a vector `v` (`θ > 0`;
    default, or `None`, 1); `eta` is ignored.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.prox.simplex(jnp.array([1.0, 0.5, -1.0]), 1.0))
    [0.75 0.25 0.  ]

    ```
    """
    theta = _theta(theta, "simplex", 1.0)
    return projections.projection_simplex(v, theta)


def l1_ball(v: Array, theta: ArrayLike = 1.0, eta: ArrayLike = 1.0) -> Array:
    r"""Projection onto the L1 ball `{‖u‖₁ <= θ}` (`θ > 0`; default, or `None`,
    1); `eta` is ignored.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.prox.l1_ball(jnp.array([1.0, -0.5, 0.1]), 1.0))
    [ 0.75 -0.25  0.  ]

    ```
    """
    theta = _theta(theta, "l1_ball", 1.0)
    return projections.projection_l1_ball(v, theta)


def l2_ball(v: Array, theta: ArrayLike = 1.0, eta: ArrayLike = 1.0) -> Array:
    r"""Projection onto the L2 ball `{‖u‖₂ <= θ}` (`θ > 0`; default, or `None`,
    1); `eta` is ignored.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.prox.l2_ball(jnp.array([3.0, 4.0]), 1.0))
    [0.6 0.8]

    ```
    """
    theta = _theta(theta, "l2_ball", 1.0)
    return projections.projection_l2_ball(v, theta)


__all__ = [
    "box",
    "elastic_net",
    "group_l1",
    "l1",
    "l1_ball",
    "l2_ball",
    "non_negative_l1",
    "simplex",
]
