"""`eqx.filter_jit` with a fast path for the usual eager call.

`eqx.filter_jit` partitions every argument and output into arrays and the rest in
Python at each call: for a small problem that costs as long as the compiled
program itself. An entry point whose arguments split into arrays (first) and a
configuration (the rest: problem functions, solvers, tolerances) calls `jax.jit`
with the configuration static instead, when the arrays are concrete and the
configuration hashable; its C++ dispatch costs a fraction. Otherwise (a tracer: the
call is inside `jit`; arrays inside the configuration; Python scalars among the
arrays) `eqx.filter_jit` sorts them out as before. Both compile the same function.
"""

import logging
from collections.abc import Callable

import equinox as eqx
import jax
import jax.tree_util as jtu


class EagerJit:
    """Wraps `fn(*arrays, *config)` with `num_arrays` leading array arguments."""

    def __init__(self, fn: Callable, num_arrays: int, num_args: int):
        self.num_arrays = num_arrays
        self.jit = jax.jit(fn, static_argnums=tuple(range(num_arrays, num_args)))
        self.filter_jit = eqx.filter_jit(fn)

    def __call__(self, *args):
        if not self._fast(args):
            return self.filter_jit(*args)
        callback_log = logging.getLogger("jax._src.callback")
        callback_log.addFilter(_failed_check_filter)
        try:
            # blocking raises a failed `eqx.error_if` here, not at a later use
            return jax.block_until_ready(self.jit(*args))
        except (jax.errors.JaxRuntimeError, ValueError) as error:
            # a failed `eqx.error_if` check (`throw=True`) comes as either, its
            # message buried in a traceback: `eqx.filter_jit` raises it legibly
            if "_EquinoxRuntimeError" not in str(error):
                raise
            return self.filter_jit(*args)
        finally:
            callback_log.removeFilter(_failed_check_filter)

    def _fast(self, args) -> bool:
        """Concrete arrays first, and a hashable configuration (no arrays)."""
        try:
            hash(args[self.num_arrays :])
        except TypeError:
            return False
        concrete = lambda a: eqx.is_array(a) and not isinstance(a, jax.core.Tracer)
        return all(map(concrete, jtu.tree_leaves(args[: self.num_arrays])))


def _failed_check_filter(record: logging.LogRecord) -> bool:
    """Drops JAX's log of a failed `eqx.error_if` under `jax.jit` (a traceback that
    the legible error raised after it repeats), as `eqx.filter_jit` does."""
    return record.getMessage() != "jax.pure_callback failed"
