"""MA-SOBA: step-by-step against the NumPy transcription, deterministic
convergence, bounded adjoint."""

import jax
import numpy as np
import pytest

import bilevax as bx

from ._quadratic import Quadratic
from ._reference import SampledQuadratic, ma_soba_step, np_


@pytest.mark.parametrize(
    "radius", [0.5, pytest.param(100.0, marks=pytest.mark.slow)]
)  # projection active / inactive
def test_steps_match_the_numpy_transcription(radius):
    P = SampledQuadratic()
    alg = bx.bilevel.MASOBA(
        inner_step=0.3, outer_step=0.1, averaging=0.2, radius=radius, batch_size=5
    )
    data = bx.bilevel.BilevelData(*P.data)
    state = alg.init(P.problem, P.x0, P.y0, data, jax.random.key(0))
    x, y, v, h = np_(P.x0), np_(P.y0), np.zeros(len(P.y0)), np.zeros(len(P.x0))
    step = jax.jit(lambda s, k: alg.step(P.problem, s, data, k))
    for t in range(6):
        key = jax.random.key(t)
        state, _ = step(state, key)
        x, y, v, h = ma_soba_step(P, x, y, v, h, 0.3, 0.1, 0.2, radius, key, 5)
        for a, b in ((state.x, x), (state.y, y), (state.v, v), (state.average, h)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    assert np.linalg.norm(v) <= radius + 1e-12


def test_deterministic_reaches_1e_3_with_defaults():
    Q = Quadratic()
    res = jax.jit(
        lambda: bx.bilevel.MASOBA().run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=600)
    )()
    assert res.result == bx.bilevel.RESULTS.successful
    assert Q.grad_norm_ratio(res.x) <= 1e-3
