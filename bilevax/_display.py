"""Readable `repr`s for result and statistics objects: statuses by name, scalars by
value, arrays by shape, so that printing a result never dumps its iterates."""

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
