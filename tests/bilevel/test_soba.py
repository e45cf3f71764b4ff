"""SOBA: step-by-step against the NumPy transcription, deterministic convergence,
and a noise floor that shrinks with the batch size."""

import jax
import numpy as np
import pytest

import bilevax as bx

from ._quadratic import Quadratic
from ._reference import SampledQuadratic, np_, soba_step

Q = Quadratic(dx=4, dy=8, n=64)
Q_DET = Quadratic()


def test_steps_match_the_numpy_transcription():
    P = SampledQuadratic()
    soba = bx.bilevel.SOBA(inner_step=0.3, outer_step=0.1, batch_size=5)
    data = bx.bilevel.BilevelData(*P.data)
    state = soba.init(P.problem, P.x0, P.y0, data, jax.random.key(0))
    x, y, v = np_(P.x0), np_(P.y0), np.zeros(len(P.y0))
    step = jax.jit(lambda s, k: soba.step(P.problem, s, data, k))
    for t in range(6):
        key = jax.random.key(t)
        state, info = step(state, key)
        x, y, v, d_x = soba_step(
            P, x, y, v, float(state.rho), float(state.gamma), key, 5
        )
        np.testing.assert_allclose(state.x, x, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.y, y, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.v, v, rtol=0, atol=1e-10)
        np.testing.assert_allclose(
            info.hypergradient_norm, np.linalg.norm(d_x), atol=1e-10
        )


def test_deterministic_reaches_1e_3_with_defaults_under_jit():
    Q = Q_DET
    run = jax.jit(
        lambda: bx.bilevel.SOBA().run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=600)
    )
    res = run()
    assert res.result == bx.bilevel.RESULTS.successful
    assert Q.grad_norm_ratio(res.x) <= 1e-3


@pytest.mark.slow
def test_noise_floor_shrinks_with_batch_size_vmapped_over_seeds():
    keys = jax.random.split(jax.random.key(1), 4)

    def final_ratio(batch_size):
        soba = bx.bilevel.SOBA(batch_size=batch_size)
        run = lambda k: soba.run(Q.problem, Q.x0, Q.y0, Q.data, key=k, num_steps=400).x
        xs = jax.jit(jax.vmap(run))(keys)
        return np.median([Q.grad_norm_ratio(x) for x in xs])

    small, large = final_ratio(2), final_ratio(32)
    assert large < 0.5 * small, (small, large)
    assert small > 1e-3  # constant steps: a noise floor, not convergence
