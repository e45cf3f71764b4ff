"""`save` and `load`: results and states to one `.npz` file that carries its own
structure, so that loading needs no template (`equinox.tree_deserialise_leaves`
needs one of the same shapes, e.g. the same `num_steps`).

The file holds the arrays, bit for bit, and a JSON description of the containers
around them: equinox modules, named tuples, tuples, lists and dicts (by class
name), enumeration statuses, PRNG keys and Python scalars. No function or other
Python object is stored, and loading runs no pickle; it imports the modules that
define the classes named in the file (bilevax's, optax's, ...), so load only files
you trust, as with any file that names code.
"""

import dataclasses
import importlib
import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_STRUCTURE = "__structure__"


def save(path: str | os.PathLike, tree) -> None:
    """Save a result or state (a pytree of arrays in equinox modules, named
    tuples, tuples, lists and dicts) to `path`, a NumPy `.npz` file that also
    describes the structure, so that `load(path)` rebuilds it without a template.

    **Arguments:**

    - `path`: file to write (used as given: no suffix is added).
    - `tree`: e.g. a `BilevelResult`, an algorithm state or a `ConstrainedSolution`.

    **Raises:** `TypeError` naming the part of `tree` that cannot be described in
    the file (a function or another Python object): save the arrays instead.

    Example:

    ```python
    >>> import tempfile, os, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> solver = bx.bilevel.HOAG()
    >>> first = solver.run(problem, jnp.zeros(2), jnp.zeros(2), num_steps=10)
    >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> bx.save(path, first)
    >>> loaded = bx.load(path)  # no template: any num_steps
    >>> x0 = y0 = jnp.zeros(2)
    >>> rest = solver.run(problem, x0, y0, num_steps=5, state=loaded)
    >>> print(rest.total_steps, rest.history.step)  # the whole history so far
    15 [ 1  2  3  4  5  6  7  8  9 10 11 12 13 14 15]

    ```
    """
    arrays = []
    structure = _describe(tree, arrays, "tree")
    entries = {f"a{i}": a for i, a in enumerate(arrays)}
    entries[_STRUCTURE] = np.array(json.dumps(structure))
    with open(path, "wb") as f:
        np.savez(f, **entries)


def load(path: str | os.PathLike):
    """Load what `save` wrote: the same structure, with the same arrays (as JAX
    arrays, bit-identical, of the same dtypes) and statuses.

    **Raises:** `ValueError` if `path` is not a file written by `save`.

    Example:

    ```python
    >>> import tempfile, os, jax.numpy as jnp
    >>> import bilevax as bx
    >>> path = os.path.join(tempfile.mkdtemp(), "tree.npz")
    >>> bx.save(path, {"w": jnp.arange(3.0), "steps": (jnp.array([4]), 2.5)})
    >>> bx.load(path)
    {'w': Array([0., 1., 2.], dtype=float32), 'steps': (Array([4], dtype=int32), 2.5)}

    ```
    """
    with np.load(path, allow_pickle=False) as f:
        if _STRUCTURE not in f.files:
            raise ValueError(f"`path`: {os.fspath(path)!r} was not written by `save`.")
        structure = json.loads(str(f[_STRUCTURE]))
        arrays = [f[f"a{i}"] for i in range(len(f.files) - 1)]
    return _rebuild(structure, arrays)


def _describe(node, arrays, where):
    if isinstance(node, jax.Array | np.ndarray | np.generic):
        return _describe_array(node, arrays)
    if node is None or isinstance(node, bool | int | float | str):
        return {"value": node}
    if isinstance(node, type):
        return {"class": _class_name(node, where)}
    if isinstance(node, eqx.Module):
        fields = {
            f.name: _describe(getattr(node, f.name), arrays, f"{where}.{f.name}")
            for f in dataclasses.fields(node)
        }
        return {"module": _class_name(type(node), where), "fields": fields}
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        items = [
            _describe(v, arrays, f"{where}.{k}") for k, v in node._asdict().items()
        ]
        return {"namedtuple": _class_name(type(node), where), "items": items}
    if isinstance(node, tuple | list):
        items = [_describe(v, arrays, f"{where}[{i}]") for i, v in enumerate(node)]
        return {type(node).__name__: items}
    if isinstance(node, dict) and all(isinstance(k, str) for k in node):
        return {
            "dict": {
                k: _describe(v, arrays, f"{where}[{k!r}]") for k, v in node.items()
            }
        }
    raise TypeError(
        f"`save`: cannot describe {where} (a {type(node).__name__}) in the file; "
        "only arrays, scalars and equinox modules, named tuples, tuples, lists and "
        "dicts of them can be saved."
    )


def _describe_array(array, arrays):
    out = {"array": len(arrays), "dtype": str(array.dtype)}
    if jnp.issubdtype(array.dtype, jax.dtypes.prng_key):
        out["key"] = str(jax.random.key_impl(array))
        array = jax.random.key_data(array)
        out["dtype"] = str(array.dtype)
    if isinstance(array, jax.Array):
        out["weak"] = bool(array.weak_type)
    array = np.asarray(array)
    if not array.dtype.isbuiltin:  # bfloat16, float8, ...: stored as raw bits
        array = array.view(f"u{array.dtype.itemsize}")
    arrays.append(array)
    return out


def _class_name(cls, where):
    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        raise TypeError(
            f"`save`: {where} is a {cls.__qualname__} defined in `__main__` or inside "
            "a function, which another process cannot import; define it in a module."
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _class(name):
    module, qualname = name.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _rebuild(node, arrays):
    if "array" in node:
        array = arrays[node["array"]]
        array = jnp.asarray(array.view(jnp.dtype(node["dtype"])))
        if node.get("weak") and array.ndim == 0:
            weak = jnp.asarray(array.item())  # a weakly typed scalar again
            array = weak if weak.dtype == array.dtype else array
        if "key" in node:
            array = jax.random.wrap_key_data(array, impl=node["key"])
        return array
    if "value" in node:
        return node["value"]
    if "class" in node:
        return _class(node["class"])
    if "module" in node:
        module = object.__new__(_class(node["module"]))
        for name, value in node["fields"].items():
            object.__setattr__(module, name, _rebuild(value, arrays))
        return module
    if "namedtuple" in node:
        return _class(node["namedtuple"])(*(_rebuild(v, arrays) for v in node["items"]))
    if "dict" in node:
        return {k: _rebuild(v, arrays) for k, v in node["dict"].items()}
    kind = "tuple" if "tuple" in node else "list"
    return {"tuple": tuple, "list": list}[kind](_rebuild(v, arrays) for v in node[kind])
