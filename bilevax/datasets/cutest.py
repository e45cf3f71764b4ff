"""CUTEst test problems from the PyPI package `sif2jax`, as `ConstrainedProblem`s.

sif2jax writes a problem as `objective(y, args)`, `constraint(y) -> (eq, ineq)` with
inequalities `ineq >= 0`, and optional `bounds`; `load` turns it into bilevax's
convention (`ineq(y, args) <= 0`, i.e. the negated sif2jax inequalities, and
`bounds=(lower, upper)`).

Caveat (sif2jax 0.0.8): some problems still return pycutest's raw values, where an
`L`-type row means `row <= 0` and a ranged row keeps only one side. `load` corrects
the rows listed in `_LESS_EQUAL_ROWS` (checked against the Hock-Schittkowski book);
other problems with such rows (HS83, HS93, HS104 among them) are not the book's
problems, and their recorded optimal values do not apply.

Import time: `import sif2jax` imports all of its ~1000 problems and takes one to
two minutes (CLEUVEN7 builds its data at import). `load` imports only the module
that defines the requested problem, under a private package name so that sif2jax
itself is left alone; when that is not possible (a problem whose class name is not
its SIF name, say) it imports sif2jax whole.
"""

import difflib
import functools
import importlib
import importlib.util
import pathlib
import re
import sys
import types

import equinox as eqx
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from ..solvers import ConstrainedProblem
from ._optional import require


class CUTEstProblem(eqx.Module):
    """A CUTEst problem ready for `bilevax.solvers.minimize`.

    - `name`: the SIF name (`"HS71"`).
    - `problem`: the `ConstrainedProblem`.
    - `y0`: the standard starting point; `args`: the problem's arguments.
    - `expected_objective`: the optimal objective value sif2jax records (`None`
      when it records none).
    - `sizes`: `(n, m_eq, m_ineq, n_bounds)` (finite bounds counted).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> from bilevax.datasets import cutest
    >>> hs7 = cutest.load("HS7")
    >>> hs7.name, hs7.sizes, round(hs7.expected_objective, 4)
    ('HS7', (2, 1, 0, 0), -1.7321)

    ```
    """

    name: str = eqx.field(static=True)
    problem: ConstrainedProblem
    y0: PyTree[Array]
    args: PyTree
    expected_objective: float | None = eqx.field(static=True)
    sizes: tuple[int, int, int, int] = eqx.field(static=True)


def _sif2jax():
    return require(
        "sif2jax.cutest",
        "CUTEst problems come from the PyPI package `sif2jax`: "
        "`pip install sif2jax` (or `pip install 'bilevax[test]'`).",
    )


_ALIAS = "_bilevax_sif2jax"


def _package(name: str, path: pathlib.Path):
    """An empty package `name` whose submodules live in `path` (its `__init__` is
    not run)."""
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        module.__package__ = name
        sys.modules[name] = module


@functools.cache
def _class_files(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Which file of sif2jax's `cutest` tree defines each top-level class (read
    once per process)."""
    found = {}
    for path in sorted((root / "cutest").rglob("*.py")):
        if path.name != "__init__.py":
            for name in re.findall(r"^class (\w+)\(", _text(path), re.M):
                found.setdefault(name, path)
    return found


def _sif2jax_root() -> pathlib.Path | None:
    """The folder of the installed sif2jax package (not imported), or `None`."""
    spec = importlib.util.find_spec("sif2jax")
    if spec is None or spec.origin is None:
        return None
    return pathlib.Path(spec.origin).parent


def _problem_alone(name: str):
    """An instance of the sif2jax problem class `name`, importing only the module
    that defines it; `None` if it is not found that way."""
    root = _sif2jax_root()
    if root is None:
        return None
    path = _class_files(root).get(name)
    if path is None:
        return None
    *packages, module = path.relative_to(root).with_suffix("").parts
    package, directory = _ALIAS, root
    _package(package, directory)
    for part in packages:
        package, directory = f"{package}.{part}", directory / part
        _package(package, directory)
    try:
        cls = getattr(importlib.import_module(f"{package}.{module}"), name)
        return cls()
    except Exception:  # an unexpected module layout: import sif2jax whole instead
        return None


def _check_known(name: str):
    """Raise `KeyError` at once for a name that no file of sif2jax's `cutest` tree
    mentions, instead of importing all of sif2jax (one to two minutes) to learn
    that it is unknown."""
    root = _sif2jax_root()
    if root is None:
        return
    classes = _class_files(root)
    word = re.compile(rf"['\"]{re.escape(name)}['\"]")
    if not classes or (
        name.strip() == name
        and re.fullmatch(r"[\w.+-]+", name)
        and any(word.search(_text(path)) for path in set(classes.values()))
    ):
        return
    upper = {c.upper(): c for c in classes}
    close = difflib.get_close_matches(name.strip().upper(), list(upper), n=5)
    close = [upper[c] for c in close]
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise KeyError(f"sif2jax has no CUTEst problem called {name!r}.{hint}")


@functools.cache
def _text(path: pathlib.Path) -> str:
    return path.read_text()


# rows that sif2jax 0.0.8 returns as `row <= 0` (pycutest's L-type convention)
_LESS_EQUAL_ROWS = {"HS76": (0, 1)}


def _flat(tree) -> Array:
    return jfu.ravel_pytree(tree)[0]


def load(name: str) -> CUTEstProblem:
    """The CUTEst problem `name` (e.g. `"HS71"`, `"BT2"`, `"TRIGON1NE"`) from
    sif2jax, with its standard starting point.

    Raises `KeyError` for a name sif2jax does not have, and `ValueError` for an
    unconstrained problem without bounds (nothing for a constrained solver to do).

    Example:

    ```python
    >>> import jax
    >>> import bilevax as bx
    >>> from bilevax.datasets import cutest
    >>> hs7 = cutest.load("HS7")  # float64 is advised; float32 here
    >>> solver = bx.solvers.AugmentedLagrangian()
    >>> solution = bx.solvers.minimize(hs7.problem, hs7.y0, hs7.args, solver)
    >>> value = hs7.problem.objective(solution.y, hs7.args)
    >>> round(float(value), 3), round(hs7.expected_objective, 3)
    (-1.732, -1.732)

    ```
    """
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a str (e.g. 'HS71'), got {name!r}.")
    source = _problem_alone(name)
    if source is None:
        _check_known(name)
        source = _sif2jax().get_problem(name)
    if source is None:
        raise KeyError(f"sif2jax has no CUTEst problem called {name!r}.")
    y0 = source.y0
    constraint = getattr(source, "constraint", None)
    eq = ineq = None
    m_eq = m_ineq = 0
    if constraint is not None:
        eq_out, ineq_out = constraint(y0)
        if eq_out is not None:
            eq = lambda y, args: _flat(constraint(y)[0])
            m_eq = _flat(eq_out).size
        if ineq_out is not None:
            m_ineq = _flat(ineq_out).size
            sign = np.ones(m_ineq)
            sign[list(_LESS_EQUAL_ROWS.get(name, ()))] = -1.0

            def ineq(y, args):
                out = _flat(constraint(y)[1])
                return -jnp.asarray(sign, out.dtype) * out

    bounds = getattr(source, "bounds", None)
    n_bounds = 0
    if bounds is not None:
        lower, upper = (jtu.tree_map(jnp.asarray, b) for b in bounds)
        n_bounds = int(jnp.sum(jnp.isfinite(_flat(lower))))
        n_bounds += int(jnp.sum(jnp.isfinite(_flat(upper))))
        bounds = (lower, upper) if n_bounds else None
    if eq is None and ineq is None and bounds is None:
        raise ValueError(f"{name} is unconstrained: use an unconstrained minimiser.")
    expected = source.expected_objective_value
    return CUTEstProblem(
        name=name,
        problem=ConstrainedProblem(source.objective, eq=eq, ineq=ineq, bounds=bounds),
        y0=y0,
        args=source.args,
        expected_objective=None if expected is None else float(expected),
        sizes=(_flat(y0).size, m_eq, m_ineq, n_bounds),
    )


__all__ = ["CUTEstProblem", "load"]
