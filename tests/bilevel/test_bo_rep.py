"""BO-REP: step by step against the NumPy transcription (periodic updates and
projection included); deterministic convergence with a decaying step."""

import jax
import numpy as np
import pytest

import bilevax as bx

from ._quadratic import Quadratic
from ._reference import SampledQuadratic, bo_rep_step, np_


def test_steps_match_the_numpy_transcription():
    P = SampledQuadratic()
    alg = bx.bilevel.BOREP(
        step_decay=0.9, radius=0.5, period=3, periodic_steps=2, batch_size=5
    )
    data = bx.bilevel.BilevelData(*P.data)
    state = jax.jit(lambda: alg.init(P.problem, P.x0, P.y0, data, jax.random.key(0)))()
    c = dict(
        rho=float(state.rho),
        eta=float(state.eta),
        radius=0.5,
        beta=0.9,
        decay=0.9,
        period=3,
        steps=2,
    )
    x, y = np_(P.x0), np_(state.y)  # y after the initialisation refinement
    v, m = np.zeros(len(y)), np.zeros(len(x))
    step = jax.jit(lambda s, k: alg.step(P.problem, s, data, k))
    for t in range(7):
        key = jax.random.key(t)
        state, _ = step(state, key)
        x, y, v, m = bo_rep_step(P, x, y, v, m, t, c, key, 5)
        for a, b in ((state.x, x), (state.y, y), (state.v, v), (state.momentum, m)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_initialisation_refinement_approaches_the_inner_solution():
    P = SampledQuadratic()
    data = bx.bilevel.BilevelData(*P.data)
    state = jax.jit(
        lambda: bx.bilevel.BOREP().init(P.problem, P.x0, P.y0, data, jax.random.key(0))
    )()
    grad = jax.grad(P.problem.inner, argnums=1)
    before = np.linalg.norm(grad(P.x0, P.y0, P.data[0]))
    assert np.linalg.norm(grad(P.x0, state.y, P.data[0])) < 1e-3 * before


def test_deterministic_reaches_1e_3_with_a_decaying_step():
    Q = Quadratic()
    alg = bx.bilevel.BOREP(step_decay=0.99)
    res = jax.jit(lambda: alg.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=1000))()
    assert res.result == bx.bilevel.RESULTS.successful
    assert Q.grad_norm_ratio(res.x) <= 1e-3
