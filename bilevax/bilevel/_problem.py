r"""The bilevel problem and the data it is evaluated on.

    min_x  F(x) = f(x, y*(x), outer data)
    s.t.   y*(x) = argmin_y g(x, y, inner data)

Data are held as arrays (any pytree whose leaves share a leading sample axis) and
minibatches are drawn inside `jit` by `sample_batch`.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._implicit import _check_floating, _describe


class BilevelProblem(eqx.Module):
    r"""A bilevel problem `min_x f(x, y*(x))`, `y*(x) = argmin_y g(x, y)`.

    **Attributes:**

    - `outer`: `f(x, y, batch) -> scalar`, the upper-level (e.g. validation) loss.
    - `inner`: `g(x, y, batch) -> scalar`, the lower-level (e.g. training) loss,
      minimised over `y`.
    - `inner_constraints`: optional `c(x, y) -> (p,) array`, constraints `c <= 0`
      of the lower level, which may couple `x` and `y` (used by `LVHBA`).
    - `inner_equalities`: optional `e(x, y) -> (m,) array`, constraints `e = 0` of
      the lower level.

    `x` and `y` may be any pytrees of floating-point arrays. `batch` is a minibatch
    (or the whole) of the corresponding level's data, `None` when the level has no
    data. Algorithms take the data as `data=(inner_data, outer_data)`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> def inner(x, w, batch):  # ridge regression with strength exp(x)
    ...     X, t = batch
    ...     return jnp.mean((X @ w - t) ** 2) + jnp.exp(x) * w @ w
    >>> def outer(x, w, batch):  # validation error
    ...     X, t = batch
    ...     return jnp.mean((X @ w - t) ** 2)
    >>> problem = bx.bilevel.BilevelProblem(outer=outer, inner=inner)
    >>> X = jnp.eye(3)
    >>> data = ((X, jnp.ones(3)), (X, 2 * jnp.ones(3)))
    >>> value, grad, w, _ = bx.bilevel.hypergradient(problem, 0.0, 0 * X[0], data=data)
    >>> print(round(float(value), 4), round(float(grad), 4))
    3.0625 0.6562

    ```
    """

    outer: Callable[..., Array]
    inner: Callable[..., Array]
    inner_constraints: Callable[..., Array] | None = None
    inner_equalities: Callable[..., Array] | None = None


class BilevelData(eqx.Module):
    """Data of both levels: pytrees of arrays with a common leading sample axis per
    level, or `None` for a level whose function takes no data.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> train = (jnp.ones((100, 3)), jnp.ones(100))
    >>> data = bx.bilevel.BilevelData(inner=train, outer=None)
    >>> data.inner[0].shape
    (100, 3)

    ```
    """

    inner: PyTree[Array] | None = None
    outer: PyTree[Array] | None = None


def as_data(data) -> BilevelData:
    """Accepts `None`, a `BilevelData` or a pair `(inner_data, outer_data)`."""
    if data is None:
        return BilevelData()
    if isinstance(data, BilevelData):
        return data
    if isinstance(data, tuple | list) and len(data) == 2:
        return BilevelData(inner=data[0], outer=data[1])
    raise TypeError(
        "`data` must be None, a `BilevelData` or a pair `(inner_data, outer_data)`; "
        f"got {type(data).__name__}."
    )


def num_samples(level_data: PyTree[Array] | None, name: str) -> int | None:
    """The common leading-axis length of a level's data (checked)."""
    leaves = jtu.tree_leaves(level_data)
    if not leaves:
        return None
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        shapes = [jnp.shape(leaf) for leaf in leaves]
        raise ValueError(
            f"All arrays of the {name} data need the same leading (sample) axis; got "
            f"shapes {shapes}."
        )
    return sizes.pop()


def sample_batch(
    level_data: PyTree[Array] | None, key: Array, batch_size: int | None
) -> PyTree[Array] | None:
    """A minibatch of `batch_size` samples drawn uniformly with replacement (inside
    `jit`); the whole data when `batch_size` is `None` or `level_data` is `None`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> X, t = jnp.arange(10.0).reshape(5, 2), jnp.arange(5.0)
    >>> Xb, tb = bx.bilevel.sample_batch((X, t), jax.random.key(0), 3)
    >>> Xb.shape, tb.shape, bool(jnp.all(Xb[:, 0] == 2 * tb))  # rows drawn together
    ((3, 2), (3,), True)

    ```
    """
    if level_data is None or batch_size is None:
        return level_data
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or batch_size < 1
    ):
        raise TypeError(
            f"`batch_size` must be a positive int or None, got {batch_size!r}."
        )
    n = num_samples(level_data, "batched")
    idx = jax.random.randint(key, (batch_size,), 0, n)
    return jtu.tree_map(lambda a: a[idx], level_data)


def _scalar_check(fn, name, x, y, batch):
    try:
        out = eqx.filter_eval_shape(fn, x, y, batch)
    except Exception as e:
        raise ValueError(
            f"Calling the problem's `{name}(x, y, batch)` failed with x: "
            f"{_describe(jax.eval_shape(lambda: x))}, y: "
            f"{_describe(jax.eval_shape(lambda: y))} and a batch of the {name} data "
            f"({_describe(jax.eval_shape(lambda: batch))}). Check that the shapes of "
            f"x, y and the data match what `{name}` expects.\n"
            f"{type(e).__name__}: {e}"
        ) from e
    if not (isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()):
        raise ValueError(
            f"The problem's `{name}(x, y, batch)` must return a scalar; got "
            f"{_describe(out)}."
        )


def check_problem(
    problem: BilevelProblem,
    x: Any,
    y: Any,
    data: BilevelData,
    names: tuple[str, str] = ("x", "y"),
) -> None:
    """Clear errors for the usual mistakes, raised at trace time: `x` and `y`
    (called `names` in the messages) must be floating-point (integers are refused,
    not converted: their gradients would be `float0`), and each level's data must
    have at least one sample."""
    if not isinstance(problem, BilevelProblem):
        raise TypeError(f"Expected a `BilevelProblem`, got {type(problem).__name__}.")
    _check_floating(x, names[0])
    _check_floating(y, names[1])
    inner_n = num_samples(data.inner, "inner")
    outer_n = num_samples(data.outer, "outer")
    for level, n in (("inner", inner_n), ("outer", outer_n)):
        if n == 0:
            raise ValueError(
                f"`data`: the {level} data has no samples (a leading axis of length "
                "0); its losses would be NaN (a mean over nothing)."
            )
    one = lambda d, n: None if n is None else jtu.tree_map(lambda a: a[:1], d)
    _scalar_check(problem.inner, "inner", x, y, one(data.inner, inner_n))
    _scalar_check(problem.outer, "outer", x, y, one(data.outer, outer_n))
