"""MAID: step by step against the NumPy transcription (line search and accuracy
updates included), convergence with defaults."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevax as bx

from ._quadratic import Quadratic
from ._reference import maid_step, np_

CFG = dict(
    eps0=1e-11,
    eps_min=1e-13,
    eta=1e-4,
    backtrack=0.5,
    max_backtracks=2,
    growth=10 / 9,
    tighten=0.5,
    loosen=1.05,
    inner_steps=5000,
)


def test_steps_match_the_numpy_transcription():
    Q = Quadratic(dx=3, dy=5, n=16)
    # a first trial step 8/ℓ_h and two backtracks: some line searches fail and
    # tighten ε, others succeed and loosen it
    maid = bx.bilevel.MAID(lr=8.0, linear_steps=200, **CFG)
    data = bx.bilevel.BilevelData(*Q.data)
    state = jax.jit(lambda: maid.init(Q.problem, Q.x0, Q.y0, data, jax.random.key(0)))()
    names = ("eps", "trial", "scale", "lip_g", "mu_g", "lip_f")
    s = {k: float(getattr(state, k)) for k in names} | {"failures": 0}
    x, y = np_(Q.x0), np_(Q.y0)
    step = jax.jit(lambda st: maid.step(Q.problem, st, data, jax.random.key(0)))
    outcomes = set()
    for _ in range(10):
        state, info = step(state)
        x_old = x
        x, y, s, p = maid_step(Q, x, y, s, CFG)
        outcomes.add(bool(np.any(x != x_old)))
        np.testing.assert_allclose(state.x, x, rtol=0, atol=1e-10)
        np.testing.assert_allclose(state.y, y, rtol=0, atol=1e-10)
        np.testing.assert_allclose(
            info.hypergradient_norm, np.linalg.norm(p), atol=1e-9
        )
        np.testing.assert_allclose(state.eps, s["eps"], rtol=1e-12)
        np.testing.assert_allclose(state.trial, s["trial"], rtol=1e-12)
    assert outcomes == {True, False}  # both branches exercised


def test_deterministic_reaches_1e_3_with_defaults():
    Q = Quadratic()
    res = jax.jit(
        lambda: bx.bilevel.MAID().run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=100)
    )()
    assert res.result == bx.bilevel.RESULTS.successful
    assert Q.grad_norm_ratio(res.x) <= 1e-3


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_defaults_on_data_of_another_scale(scale):
    """Ridge log-strength tuning with the data (and so ℓ_h) multiplied by 100: the
    first trial step `lr/ℓ_h` is then far too long, and a line search that never
    shrinks it across iterations left x at x0 while reporting success."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        X = scale * rng.standard_normal((40, 5))
        t = X @ rng.standard_normal(5) + 0.8 * scale * rng.standard_normal(40)
        train, val = (X[:25], t[:25]), (X[25:], t[25:])

        def h(x):  # the exact outer loss
            A, b = train
            w = np.linalg.solve(A.T @ A / 25 + np.exp(x) * np.eye(5), A.T @ b / 25)
            return 0.5 * np.mean((val[0] @ w - val[1]) ** 2)

        grid = np.linspace(-10, 15, 5001)
        h_star = min(h(g) for g in grid)
        problem = bx.bilevel.BilevelProblem(
            outer=lambda x, y, b: 0.5 * jnp.mean((b[0] @ y - b[1]) ** 2),
            inner=lambda x, y, b: (
                0.5 * jnp.mean((b[0] @ y - b[1]) ** 2) + 0.5 * jnp.exp(x[0]) * y @ y
            ),
        )
        data = jax.tree.map(jnp.asarray, (train, val))
        result = bx.bilevel.MAID().run(
            problem, jnp.zeros(1), jnp.zeros(5), data, num_steps=300
        )
        rel = (h(float(result.x[0])) - h_star) / (h(0.0) - h_star)
        assert rel <= 1e-3, rel
