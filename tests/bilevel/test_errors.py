"""Bad input gives clear errors; a diverging run stops with a failure status."""

import jax.numpy as jnp
import optax
import pytest

import bilevax as bx

from ._quadratic import Quadratic

Q = Quadratic()


def test_shape_mismatch_of_x_names_the_function():
    algorithm = bx.bilevel.HypergradientDescent()
    with pytest.raises(ValueError, match="inner"):
        algorithm.run(Q.problem, jnp.ones(7), Q.y0, Q.data, num_steps=2)


def test_shape_mismatch_of_y():
    with pytest.raises(ValueError, match="shapes of x, y and the data"):
        bx.bilevel.hypergradient(Q.problem, Q.x0, jnp.zeros(3), data=Q.data)


def test_non_scalar_loss():
    problem = bx.bilevel.BilevelProblem(outer=lambda x, y, b: y, inner=Q.problem.inner)
    with pytest.raises(ValueError, match="must return a scalar"):
        bx.bilevel.hypergradient(problem, Q.x0, Q.y0, data=Q.data)


def test_data_with_unequal_sample_axes():
    inner, outer = Q.data
    with pytest.raises(ValueError, match="same leading"):
        bx.bilevel.F2SA().run(
            Q.problem, Q.x0, Q.y0, ((inner, inner[:3]), outer), num_steps=2
        )


def test_integer_variables_are_refused():
    with pytest.raises(TypeError, match="floating-point"):
        bx.bilevel.PenaltyMethod().run(
            Q.problem, jnp.ones(10, int), Q.y0, Q.data, num_steps=2
        )


def test_bad_data_argument():
    with pytest.raises(TypeError, match="inner_data, outer_data"):
        bx.bilevel.HOAG().run(Q.problem, Q.x0, Q.y0, Q.data[0], num_steps=2)


@pytest.mark.parametrize(
    "algorithm",
    [
        bx.bilevel.HypergradientDescent(optax.sgd(1e3)),
        bx.bilevel.PenaltyMethod(lr_outer=1e3),
        bx.bilevel.F2SA(lr_outer=1e3, outer_decay=0.0),
    ],
    ids=["hgd", "penalty", "f2sa"],
)
def test_divergence_is_reported_not_returned(algorithm):
    res = algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=300, throw=False)
    assert res.result == bx.bilevel.RESULTS.diverged
    assert bool(jnp.all(jnp.isfinite(res.x))) and bool(jnp.all(jnp.isfinite(res.y)))
    assert int(res.num_steps) < 300


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="noise"):
        bx.bilevel.F2SA(noise="heavy")
    with pytest.raises(ValueError, match="variance_reduction"):
        bx.bilevel.PenaltyMethod(variance_reduction="saga")
    with pytest.raises(ValueError, match="variance_reduction"):
        bx.bilevel.F2SA(variance_reduction="saga")


def test_empty_data_and_integer_starts_are_named():
    """A level's data with no samples (its mean losses would be NaN) and integer
    starting points (their gradients would be float0) are refused at the boundary,
    naming the argument: `data`, `x0`/`y0` for `run`, `x`/`y0` for
    `hypergradient`."""
    X, t = jnp.ones((5, 3)), jnp.ones(5)
    empty = (X[:0], t[:0])
    problem = bx.bilevel.BilevelProblem(
        outer=lambda x, w, b: jnp.mean((b[0] @ w - b[1]) ** 2),
        inner=lambda x, w, b: jnp.mean((b[0] @ w - b[1]) ** 2) + jnp.exp(x) * w @ w,
    )
    hyper = lambda x, y0, data: bx.bilevel.hypergradient(problem, x, y0, data=data)
    run = lambda x0, y0, data: bx.bilevel.HOAG().run(problem, x0, y0, data, num_steps=2)
    for call in (hyper, run):
        for data in ((empty, (X, t)), ((X, t), empty)):
            with pytest.raises(ValueError, match="`data`.*no samples"):
                call(0.0, jnp.zeros(3), data)
    with pytest.raises(TypeError, match="`x0`.*floating"):
        run(jnp.array(3), jnp.zeros(3), ((X, t), (X, t)))
    with pytest.raises(TypeError, match="`y0`.*floating"):
        run(0.0, jnp.zeros(3, int), ((X, t), (X, t)))
    with pytest.raises(TypeError, match="`y0`.*floating"):
        hyper(0.0, jnp.zeros(3, int), ((X, t), (X, t)))
