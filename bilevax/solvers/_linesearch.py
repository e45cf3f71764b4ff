"""The one backtracking (Armijo) line search of the constrained solvers."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


def backtrack(
    accept: Callable[[Array], tuple[Array, PyTree]],
    dtype,
    *,
    shrink: float = 0.5,
    min_step: float = 1e-12,
) -> tuple[Array, Array, PyTree]:
    """The first step `α` of `1, shrink, shrink², ...` (down to `min_step`) with
    `accept(α)[0]` true, where `accept(α) -> (ok, payload)` (e.g. an Armijo test
    `φ(α) <= φ(0) + c α φ'(0)` and the trial point).

    **Returns:** `(α, ok, payload)` at the last step tried; `ok` is false when no
    step down to `min_step` was accepted.
    """

    def fails(carry):
        alpha, ok, _ = carry
        return ~ok & (alpha * shrink >= min_step)

    def smaller(carry):
        alpha = carry[0] * shrink
        return (alpha, *accept(alpha))

    one = jnp.array(1.0, dtype)
    return jax.lax.while_loop(fails, smaller, (one, *accept(one)))
