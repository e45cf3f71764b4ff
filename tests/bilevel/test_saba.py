"""SABA: step-by-step against the NumPy transcription, convergence with constant
steps (no noise floor)."""

import jax
import numpy as np
import pytest

import bilevax as bx

from ._quadratic import Quadratic
from ._reference import SabaMemory, SampledQuadratic, np_, saba_step


def test_steps_match_the_numpy_transcription():
    P = SampledQuadratic()
    saba = bx.bilevel.SABA(inner_step=0.3, outer_step=0.1, batch_size=5)
    data = bx.bilevel.BilevelData(*P.data)
    state = saba.init(P.problem, P.x0, P.y0, data, jax.random.key(0))
    x, y, v = np_(P.x0), np_(P.y0), np.zeros(len(P.y0))
    mem = SabaMemory(12, 10, len(x), len(y))
    step = jax.jit(lambda s, k: saba.step(P.problem, s, data, k))
    for t in range(6):
        key = jax.random.key(t)
        state, _ = step(state, key)
        x, y, v = saba_step(P, x, y, v, mem, 0.3, 0.1, key, 5)
        for a, b in ((state.x, x), (state.y, y), (state.v, v)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.tables.inner[0], mem.gy, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.tables.outer[0], mem.fx, rtol=0, atol=1e-10)


def test_converges_past_the_soba_noise_floor():
    Q = Quadratic(dx=4, dy=8, n=64)
    saba = bx.bilevel.SABA(batch_size=8)
    res = jax.jit(lambda: saba.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=1500))()
    assert res.result == bx.bilevel.RESULTS.successful
    assert Q.grad_norm_ratio(res.x) <= 1e-3


@pytest.mark.slow
def test_reaches_1e_6_of_the_squared_hypergradient():
    Q = Quadratic()
    saba = bx.bilevel.SABA(batch_size=32)
    res = jax.jit(lambda: saba.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=4000))()
    assert Q.grad_norm_ratio(res.x) ** 2 <= 1e-6


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="batch_size"):
        bx.bilevel.SABA(batch_size=0)
    with pytest.raises(ValueError, match="averaging"):
        bx.bilevel.MASOBA(averaging=1.5)
    with pytest.raises(ValueError, match="momentum"):
        bx.bilevel.BOREP(momentum=1.0)
    with pytest.raises(ValueError, match="backtrack"):
        bx.bilevel.MAID(backtrack=1.5)
