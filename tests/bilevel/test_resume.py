"""Resumable runs: a run stopped after N steps, saved, loaded and resumed is
bit-identical to an uninterrupted run with the same key; the same key gives the
same run."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
import pytest

import bilevax as bx

from ._quadratic import Quadratic

Q = Quadratic(dx=4, dy=8, n=64)
STOCHASTIC = {
    "HypergradientDescent": bx.bilevel.HypergradientDescent(
        optax.adam(0.05), batch_size=16
    ),
    "HOAG": bx.bilevel.HOAG(),
    "F2SA": bx.bilevel.F2SA(batch_size=16),
    "F2SA-SVRG": bx.bilevel.F2SA(
        batch_size=16, variance_reduction="svrg", noise="none"
    ),
    "PenaltyMethod": bx.bilevel.PenaltyMethod(batch_size=16),
    "LVHBA": bx.bilevel.LVHBA(batch_size=16),
}


def _same(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        assert jnp.array_equal(u, v), (u, v)


@pytest.mark.parametrize("name", list(STOCHASTIC))
def test_stopped_saved_loaded_and_resumed_is_bit_identical(name, tmp_path):
    algorithm = STOCHASTIC[name]
    key = jax.random.key(7)
    run = lambda **kw: algorithm.run(
        Q.problem, Q.x0, Q.y0, Q.data, key=key, record_every=5, **kw
    )
    whole = run(num_steps=30)
    first = run(num_steps=10)
    path = tmp_path / "run.eqx"
    eqx.tree_serialise_leaves(path, first)
    like = jax.eval_shape(lambda: run(num_steps=10))
    loaded = eqx.tree_deserialise_leaves(path, like)
    _same(loaded, first)
    rest = run(num_steps=20, state=loaded)
    _same((rest.x, rest.y, rest.state), (whole.x, whole.y, whole.state))
    assert int(rest.total_steps) == 30 and int(rest.num_steps) == 20
    assert jnp.array_equal(rest.history.step, whole.history.step[2:])
    assert jnp.array_equal(rest.history.outer_loss, whole.history.outer_loss[2:])


def test_same_key_same_run_and_another_key_another_run():
    algorithm = STOCHASTIC["F2SA"]
    run = lambda key: algorithm.run(
        Q.problem, Q.x0, Q.y0, Q.data, key=key, num_steps=20
    )
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    _same((a.x, a.y), (b.x, b.y))
    assert not jnp.array_equal(a.x, c.x)


def test_distillation_resumes_bit_identically(tmp_path):
    X = jax.random.normal(jax.random.key(0), (40, 6))
    Y = jax.nn.one_hot(jnp.arange(40) % 2, 2) - 0.5
    distill = bx.bilevel.DatasetDistillation(
        bx.bilevel.KernelRidge(bx.bilevel.kernels.RBF()), batch_size=10
    )
    support, key = (X[:4], Y[:4]), jax.random.key(3)
    whole = distill.run(support, (X, Y), key=key, num_steps=12, record_every=4)
    first = distill.run(support, (X, Y), key=key, num_steps=4, record_every=4)
    eqx.tree_serialise_leaves(tmp_path / "d.eqx", first)
    loaded = eqx.tree_deserialise_leaves(tmp_path / "d.eqx", first)
    rest = distill.run(
        support, (X, Y), key=key, num_steps=8, record_every=4, state=loaded
    )
    _same(rest.x, whole.x)
