"""`EagerJit`: `jax.jit` with the configuration static for eager calls with concrete
arrays and a hashable configuration, `eqx.filter_jit` otherwise; the same numbers
and the same legible errors either way."""

import logging

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from bilevax._jit import EagerJit


def counted():
    """`scale(a, factor, check) = factor * a`, with `traces` counting its traces and
    `check` raising (at run time) on a negative entry of `a`."""
    traces = []

    def scale(a, factor, check):
        traces.append(factor)
        out = factor * a
        if check:
            out = eqx.error_if(out, jnp.any(a < 0), "`scale`: a negative entry")
        return out

    return EagerJit(scale, num_arrays=1, num_args=3), traces


def test_repeated_eager_calls_take_the_fast_path_and_trace_once():
    scale, traces = counted()
    a = jnp.arange(3.0)
    assert jnp.array_equal(scale(a, 2.0, True), 2 * a)
    assert jnp.array_equal(scale(a + 1, 2.0, True), 2 * (a + 1))
    assert traces == [2.0]
    assert scale.jit._cache_size() == 1  # served by `jax.jit`, not `filter_jit`
    scale(a, 3.0, True)  # another configuration: another program
    assert traces == [2.0, 3.0]


def test_other_calls_go_through_filter_jit_with_the_same_numbers():
    scale, traces = counted()
    a = jnp.arange(3.0)
    # an array in the configuration (unhashable), a Python scalar among the arrays
    assert jnp.array_equal(scale(a, jnp.array(2.0), False), 2 * a)
    assert scale(1.5, 2.0, False) == 3.0
    # under `jit` (tracers)
    assert jnp.array_equal(jax.jit(lambda a: scale(a, 2.0, False))(a), 2 * a)
    assert scale.jit._cache_size() == 0
    assert len(traces) == 3


def test_a_failed_check_raises_legibly_and_logs_nothing(caplog):
    scale, _ = counted()
    scale(jnp.ones(2), 2.0, True)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(eqx.EquinoxRuntimeError, match="`scale`: a negative entry"):
            scale(-jnp.ones(2), 2.0, True)
    assert not [r for r in caplog.records if "pure_callback" in r.getMessage()]
