"""The stochastic single-loop methods resume bit-identically from a saved run,
and run vmapped over seeds."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import bilevax as bx

from ._quadratic import Quadratic
from .test_resume import _same

Q = Quadratic(dx=4, dy=8, n=64)
ALGORITHMS = {
    "SABA": bx.bilevel.SABA(batch_size=16),
    "BOREP": bx.bilevel.BOREP(batch_size=16, period=3),
    "SOBA": bx.bilevel.SOBA(batch_size=16),
    "MASOBA": bx.bilevel.MASOBA(batch_size=16),
    "BOME": bx.bilevel.BOME(batch_size=16),
    "MAID": bx.bilevel.MAID(),
}
SLOW = set(ALGORITHMS)  # each compiles three runs


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ALGORITHMS],
)
def test_stopped_saved_loaded_and_resumed_is_bit_identical(name, tmp_path):
    algorithm = ALGORITHMS[name]
    key = jax.random.key(7)
    run = lambda **kw: algorithm.run(
        Q.problem, Q.x0, Q.y0, Q.data, key=key, record_every=5, **kw
    )
    whole = run(num_steps=20)
    first = run(num_steps=5)
    eqx.tree_serialise_leaves(tmp_path / "run.eqx", first)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "run.eqx", first)
    rest = run(num_steps=15, state=loaded)
    _same((rest.x, rest.y, rest.state), (whole.x, whole.y, whole.state))
    assert jnp.array_equal(rest.history.outer_loss, whole.history.outer_loss[1:])


def test_vmap_over_seeds_gives_different_runs():
    algorithm = ALGORITHMS["SABA"]
    run = lambda k: algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, key=k, num_steps=20).x
    xs = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 3))
    assert xs.shape == (3, 4) and not jnp.array_equal(xs[0], xs[1])
