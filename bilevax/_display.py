"""Readable `repr`s for result and statistics objects: statuses by name, scalars by
value, arrays by shape, so that printing a result never dumps its iterates; the
statuses of a batch of runs by name and count."""

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np


def status_name(item) -> str:
    """The name of an `equinox.internal.Enumeration` item (`"successful"`, ...);
    one name per element when batched (under `vmap`), `"?"` while traced."""
    value = item._value
    if isinstance(value, jax.core.Tracer):
        return "?"
    names = {int(v._value): k for k, v in item._enumeration._name_to_item.items()}
    value = np.asarray(value)
    if value.ndim == 0:
        return names.get(int(value), str(value))
    return "[" + ", ".join(names.get(int(v), str(v)) for v in value.ravel()) + "]"


def summarize(value) -> str:
    """A concrete scalar by value (4 significant digits), an array by dtype and
    shape (`f64[3,4]`), a pytree by its leaves' summaries."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if value.shape != () or isinstance(
            value, jax.core.Tracer | jax.ShapeDtypeStruct
        ):
            return _shape(value)
        scalar = np.asarray(value)
        if scalar.dtype == bool:
            return str(bool(scalar))
        if np.issubdtype(scalar.dtype, np.integer):
            return str(int(scalar))
        return f"{float(scalar.real):.4g}" if scalar.dtype.kind != "c" else str(scalar)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {summarize(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(summarize(v) for v in value) + ")"
    if value is None:
        return "None"
    leaves = jtu.tree_leaves(value)
    return f"{type(value).__name__}(" + ", ".join(map(summarize, leaves)) + ")"


def _shape(value) -> str:
    dtype = np.dtype(value.dtype)
    kind = {"f": "f", "i": "i", "u": "u", "b": "bool", "c": "c"}.get(dtype.kind, "")
    bits = "" if kind == "bool" else str(8 * dtype.itemsize)
    return f"{kind}{bits}[{','.join(map(str, value.shape))}]"


def fields_repr(name: str, fields: dict) -> str:
    """`Name(a=..., b=...)` from already formatted fields."""
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in fields.items()) + ")"


def _item(status):
    item = getattr(status, "result", status)
    if not isinstance(getattr(item, "_enumeration", None), type):
        raise TypeError(
            "`status` must be a status (e.g. `result.result`) or an object with a "
            f"status in `.result`; got {type(status).__name__}."
        )
    if isinstance(item._value, jax.core.Tracer):
        raise ValueError("`status` is traced: call this outside `jit` and `vmap`.")
    return item


def statuses(status) -> np.ndarray:
    """The names of the statuses of one run or of a batch of runs (e.g. from
    `jax.vmap`), as a NumPy array of strings shaped like the batch.

    **Arguments:**

    - `status`: a status enumeration item (`result.result`, `solution.result`) or
      any object with one in `.result` (a `BilevelResult`, a
      `ConstrainedSolution`, ...).

    **Raises:** `TypeError` for anything else; `ValueError` inside `jit`/`vmap`.

    A batched status cannot be indexed (`sols.result[i]` is a `TypeError`); index
    its names instead, or compare it: `sols.result == RESULTS.successful` is a
    boolean array, so `jnp.flatnonzero(sols.result != RESULTS.successful)` gives
    the indices of the failures.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> run = lambda lr: bx.bilevel.HypergradientDescent(optax.sgd(lr)).run(
    ...     problem, jnp.zeros(2), jnp.zeros(2), num_steps=50, throw=False
    ... )
    >>> runs = jax.vmap(run)(jnp.array([0.1, 100.0, 0.5]))
    >>> print(runs.result)
    [successful, diverged, successful]
    >>> names = bx.statuses(runs)
    >>> print(names[1], names.tolist())
    diverged ['successful', 'diverged', 'successful']
    >>> print(jnp.flatnonzero(runs.result != bx.bilevel.RESULTS.successful))
    [1]

    ```
    """
    item = _item(status)
    names = {int(v._value): k for k, v in item._enumeration._name_to_item.items()}
    values = np.asarray(item._value)
    return np.vectorize(lambda v: names.get(int(v), str(v)), otypes=[str])(values)


def status_counts(status) -> dict[str, int]:
    """How many runs of a batch ended with each status: `{name: count}` over all
    the names of the status enumeration, in its order (zeros included).

    **Arguments:** `status`: as `statuses`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> run = lambda lr: bx.bilevel.HypergradientDescent(optax.sgd(lr)).run(
    ...     problem, jnp.zeros(2), jnp.zeros(2), num_steps=50, throw=False
    ... )
    >>> bx.status_counts(jax.vmap(run)(jnp.array([0.1, 100.0, 0.5])))
    {'successful': 2, 'diverged': 1, 'inner_failed': 0}

    ```
    """
    names = statuses(status)
    return {
        name: int(np.sum(names == name))
        for name in _item(status)._enumeration._name_to_item
    }


def _status_repr(item) -> str:
    """bilevax's statuses print by name (`successful`, `[successful, diverged]`);
    equinox's own repr, `module.RESULTS<message>`, is empty for success and shows
    no name. Other libraries' enumerations keep equinox's repr."""
    if item._enumeration.__module__.startswith("bilevax."):
        return status_name(item)
    return _equinox_repr(item)


# equinox offers no hook for the repr of an enumeration's items (all share one
# class, `EnumerationItem`); this replaces it for bilevax's enumerations only.
class _Probe(eqx.Enumeration):
    probe = ""


_EnumerationItem = type(_Probe.probe)
_equinox_repr = _EnumerationItem.__repr__
_EnumerationItem.__repr__ = _status_repr
