"""Closed convex sets given by their Euclidean projections, for constrained
bilevel algorithms (`LVHBA`, projected outer steps).

Each set projects a pytree (`project(v)`), and the built-in ones also describe
themselves as constraints (`constraints(v)`: bounds, equalities, inequalities in
the `bilevax.solvers.ConstrainedProblem` convention), so that a projection onto
their intersection with coupling constraints can be computed by a constrained
solver.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_norm


class Constraints(eqx.Module):
    """A set as constraints on the flat vector `v` of a pytree: `bounds=(lower,
    upper)` flat arrays or `None`, `eq(v) = 0` and `ineq(v) <= 0` or `None`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> constraints = bx.bilevel.sets.Simplex().constraints(jnp.zeros(3))
    >>> print(constraints.bounds[0], constraints.eq(jnp.array([0.2, 0.3, 0.5])))
    [0. 0. 0.] [0.]

    ```
    """

    bounds: tuple[Array, Array] | None = None
    eq: Callable[[Array], Array] | None = None
    ineq: Callable[[Array], Array] | None = None


class AbstractSet(eqx.Module):
    """A closed convex set of pytrees.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> isinstance(bx.bilevel.sets.Box(0.0, 1.0), bx.bilevel.sets.AbstractSet)
    True
    >>> print(bx.bilevel.sets.Box(0.0, 1.0).project(jnp.array([-1.0, 0.5, 2.0])))
    [0.  0.5 1. ]

    ```
    """

    @abc.abstractmethod
    def project(self, v: PyTree[Array]) -> PyTree[Array]:
        """The Euclidean projection of `v` onto the set."""

    def constraints(self, v: PyTree[Array]) -> Constraints:
        """The set as constraints on `ravel(v)` (shapes from `v`)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no description as constraints; pass an "
            "explicit `projection` onto the feasible set instead."
        )


class Box(AbstractSet):
    """`lower <= v <= upper` elementwise (scalars or pytrees like `v`; `±inf` for no
    bound).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> box = bx.bilevel.sets.Box(lower=0.0, upper=1.0)
    >>> print(box.project(jnp.array([-1.0, 0.5, 2.0])))
    [0.  0.5 1. ]

    ```
    """

    lower: PyTree[Array] | float = -jnp.inf
    upper: PyTree[Array] | float = jnp.inf

    def _broadcast(self, bound, v):
        try:
            if jtu.tree_structure(bound) == jtu.tree_structure(0.0):
                return jtu.tree_map(lambda a: jnp.full_like(a, bound), v)
            return jtu.tree_map(lambda b, a: jnp.broadcast_to(b, a.shape), bound, v)
        except ValueError:
            shapes = lambda t: jtu.tree_map(jnp.shape, t)
            raise ValueError(
                f"`Box` bounds of shapes {shapes(bound)} do not fit the iterate of "
                f"shapes {shapes(v)}: give scalars or pytrees like it."
            ) from None

    def project(self, v):
        lower = self._broadcast(self.lower, v)
        upper = self._broadcast(self.upper, v)
        return jtu.tree_map(jnp.clip, v, lower, upper)

    def constraints(self, v):
        flat = lambda b: jfu.ravel_pytree(self._broadcast(b, v))[0]
        return Constraints(bounds=(flat(self.lower), flat(self.upper)))


class NonNegative(AbstractSet):
    """The nonnegative orthant `v >= 0`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.bilevel.sets.NonNegative().project(jnp.array([-1.0, 2.0])))
    [0. 2.]

    ```
    """

    def project(self, v):
        return jtu.tree_map(lambda a: jnp.maximum(a, 0.0), v)

    def constraints(self, v):
        return Box(0.0, jnp.inf).constraints(v)


class Ball(AbstractSet):
    """`‖v - center‖₂ <= radius` (the norm of the whole pytree).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.bilevel.sets.Ball(radius=1.0).project(jnp.array([3.0, 4.0])))
    [0.6 0.8]

    ```
    """

    radius: float = 1.0
    center: PyTree[Array] | float = 0.0

    def _center(self, v):
        return jtu.tree_map(lambda a: jnp.broadcast_to(self.center, a.shape), v)

    def project(self, v):
        c = self._center(v)
        d = jtu.tree_map(jnp.subtract, v, c)
        norm = tree_norm(d)
        scale = jnp.minimum(1.0, self.radius / jnp.maximum(norm, 1e-30))
        return jtu.tree_map(lambda ci, di: ci + scale * di, c, d)

    def constraints(self, v):
        c = jfu.ravel_pytree(self._center(v))[0]
        return Constraints(
            ineq=lambda u: jnp.array([jnp.sum((u - c) ** 2)]) - self.radius**2
        )


class Simplex(AbstractSet):
    """`{v >= 0, Σ v = total}` over all entries of `v`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.bilevel.sets.Simplex().project(jnp.array([0.5, 1.0, -1.0])))
    [0.25 0.75 0.  ]

    ```
    """

    total: float = 1.0

    def project(self, v):
        flat, unravel = jfu.ravel_pytree(v)
        # sort-based projection (Held, Wolfe, Crowder 1974; Duchi et al. 2008)
        u = jnp.sort(flat)[::-1]
        cumulative = jnp.cumsum(u) - self.total
        index = jnp.arange(1, flat.size + 1, dtype=flat.dtype)
        rho = jnp.sum(u - cumulative / index > 0)
        tau = cumulative[rho - 1] / rho.astype(flat.dtype)
        return unravel(jnp.maximum(flat - tau, 0.0))

    def constraints(self, v):
        flat = jfu.ravel_pytree(v)[0]
        inf = jnp.full_like(flat, jnp.inf)
        return Constraints(
            bounds=(jnp.zeros_like(flat), inf),
            eq=lambda u: jnp.array([jnp.sum(u) - self.total]),
        )


class Projection(AbstractSet):
    """A set given only by a user-supplied projection `fn(v) -> v`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> unit_interval = bx.bilevel.sets.Projection(lambda v: jnp.clip(v, 0.0, 1.0))
    >>> print(unit_interval.project(jnp.array([-1.0, 0.5, 2.0])))
    [0.  0.5 1. ]

    ```
    """

    fn: Callable[[PyTree[Array]], PyTree[Array]]

    def project(self, v):
        return self.fn(v)


class Everything(AbstractSet):
    """The whole space (no constraint).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> print(bx.bilevel.sets.Everything().project(jnp.array([-1.0, 2.0])))
    [-1.  2.]

    ```
    """

    def project(self, v):
        return v

    def constraints(self, v):
        return Constraints()


__all__ = [
    "AbstractSet",
    "Ball",
    "Box",
    "Constraints",
    "Everything",
    "NonNegative",
    "Projection",
    "Simplex",
]
