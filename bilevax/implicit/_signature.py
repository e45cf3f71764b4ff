"""The call layer of `custom_root`: binding a call to the solver's signature, and
running solvers that JAX cannot trace on concrete values.

Binding (jaxopt's `reference_signature` idea): the call `solver(*args, **kwargs)` is
bound to the solver's own signature, defaults included, and every parameter that can
be passed by position is passed by position, to the solver and to the optimality
condition alike. So a keyword named like the condition's own arguments (`y`, the usual
name of targets) cannot collide with them, the first parameter may have any name and a
default (`init_params=None`), and the condition receives the parameters in the
solver's order.

Non-traceable solvers (SciPy, NumPy, an external C++ library): when tracing the solver
raises one of JAX's tracer-conversion errors, the solver is instead called through
`jax.pure_callback` on concrete (NumPy) values. Only its output is needed: the
derivative comes from the optimality condition, which must be written in JAX.
"""

import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np

_UNTRACEABLE = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


def bind_call(solver: Callable, args: tuple, kwargs: dict, name: str):
    """`(init, params, kwargs)` of the call `solver(*args, **kwargs)`, bound to the
    solver's signature with its defaults; `params` holds every positionally passable
    parameter after the first, `kwargs` only keyword-only and `**` ones."""
    try:
        signature = inspect.signature(solver)
    except (TypeError, ValueError):  # no signature (some builtins): take it as is
        signature = None
    if signature is not None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"Bad call to `{name}{signature}`: {e}.") from None
        bound.apply_defaults()
        args, kwargs = bound.args, bound.kwargs
    if not args:
        raise TypeError(
            f"`{name}` must take the initial guess as its first positional "
            "parameter, `solver(init, *params, **kwargs)`."
        )
    return args[0], tuple(args[1:]), dict(kwargs)


def _result_shape(result_shape, init, name):
    if result_shape is not None:
        return jtu.tree_map(
            lambda s: jax.ShapeDtypeStruct(np.shape(s), s.dtype), result_shape
        )
    leaves = jtu.tree_leaves(init)
    if leaves and all(eqx.is_array_like(leaf) for leaf in leaves):
        return jax.eval_shape(lambda: init)
    raise TypeError(
        f"`{name}` cannot be traced by JAX (it converts its inputs to NumPy, e.g. to "
        "call SciPy), so it is called on concrete values through "
        "`jax.pure_callback`, which needs the shape of its output: pass "
        "`result_shape=` (a pytree of `jax.ShapeDtypeStruct` or arrays like what the "
        "solver returns) to `custom_root`, or an `init` shaped like the solution."
    )


def host_solver(solver, init, args, kwargs, result_shape, name):
    """`solver` as a traceable function that calls it on concrete values through
    `jax.pure_callback` (sequentially under `vmap`)."""
    result_shape = _result_shape(result_shape, init, name)
    dynamic, static = eqx.partition((init, args, kwargs), eqx.is_array)

    def on_host(dynamic_):
        init_, args_, kwargs_ = eqx.combine(dynamic_, static)
        out = solver(init_, *args_, **kwargs_)
        try:
            return jtu.tree_map(
                lambda s, o: np.asarray(o, s.dtype).reshape(s.shape), result_shape, out
            )
        except ValueError as e:
            raise ValueError(
                f"`{name}` returned {jtu.tree_map(np.shape, out)}, which does not "
                f"fit `result_shape` {result_shape}: {e}"
            ) from None

    def traced(init_, *args_, **kwargs_):
        dynamic_, _ = eqx.partition((init_, args_, kwargs_), eqx.is_array)
        return jax.pure_callback(
            on_host, result_shape, dynamic_, vmap_method="sequential"
        )

    return traced


def traceable_solver(solver, init, args, kwargs, result_shape, name):
    """`(closure-converted solver, its output structure)`: the solver traced as it is
    if JAX can trace it, else through `host_solver`."""
    try:
        solver_cc = eqx.filter_closure_convert(solver, init, *args, **kwargs)
        return solver_cc, eqx.filter_eval_shape(solver_cc, init, *args, **kwargs)
    except _UNTRACEABLE:
        traced = host_solver(solver, init, args, kwargs, result_shape, name)
        solver_cc = eqx.filter_closure_convert(traced, init, *args, **kwargs)
        return solver_cc, eqx.filter_eval_shape(solver_cc, init, *args, **kwargs)
