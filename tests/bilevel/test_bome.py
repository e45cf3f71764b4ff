"""BOME: step-by-step against the NumPy transcription; deterministic progress."""

import jax
import numpy as np

import bilevax as bx

from ._quadratic import Quadratic
from ._reference import SampledQuadratic, bome_step, np_


def test_steps_match_the_numpy_transcription():
    P = SampledQuadratic()
    alg = bx.bilevel.BOME(inner_step=0.2, step_size=0.05, inner_steps=4, batch_size=5)
    data = bx.bilevel.BilevelData(*P.data)
    state = alg.init(P.problem, P.x0, P.y0, data, jax.random.key(0))
    x, y = np_(P.x0), np_(P.y0)
    step = jax.jit(lambda s, k: alg.step(P.problem, s, data, k))
    for t in range(6):
        key = jax.random.key(t)
        state, _ = step(state, key)
        x, y = bome_step(P, x, y, 0.2, 0.05, 0.5, 4, key, 5)
        np.testing.assert_allclose(state.x, x, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.y, y, rtol=0, atol=1e-10)


def test_barrier_direction_decreases_q_at_rate_phi():
    grad_f = (np.array([1.0, -2.0]), np.array([0.5]))
    grad_q = (np.array([-1.0, 1.0]), np.array([2.0]))
    d, lam = bx.bilevel._bome.barrier_direction(grad_f, grad_q, 0.3)
    dot = sum(float(a @ b) for a, b in zip(d, grad_q, strict=True))
    norm2 = sum(float(a @ a) for a in grad_q)
    assert float(lam) > 0 and np.isclose(dot, 0.3 * norm2)
    _, lam = bx.bilevel._bome.barrier_direction(
        grad_f, (0 * grad_q[0], 0 * grad_q[1]), 0.3
    )
    assert float(lam) == 0.0


def test_deterministic_progress_with_defaults():
    Q = Quadratic()
    res = jax.jit(
        lambda: bx.bilevel.BOME().run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=1000)
    )()
    assert res.result == bx.bilevel.RESULTS.successful
    # BOME's fixed points are biased (φ > 0 keeps the direction off zero): it
    # gets near the solution, not to it
    assert Q.grad_norm_ratio(res.x) <= 5e-2
