"""Every bilevel algorithm on the quadratic problem: deterministic convergence,
stochastic neighbourhoods that shrink with the batch size, jit and vmap."""

import jax
import jax.numpy as jnp
import optax
import pytest

import bilevax as bx

from ._quadratic import Quadratic

Q = Quadratic()
LR = 1.0 / Q.lipschitz_h

DETERMINISTIC = {
    "ift": bx.bilevel.HypergradientDescent(optax.sgd(LR)),
    "unrolled": bx.bilevel.HypergradientDescent(
        optax.sgd(LR),
        inner_solver=bx.bilevel.GradientDescent(300),
        adjoint=bx.implicit.UnrolledAdjoint(),
    ),
    "truncated": bx.bilevel.HypergradientDescent(
        optax.sgd(LR),
        inner_solver=bx.bilevel.GradientDescent(300),
        adjoint=bx.implicit.TruncatedAdjoint(50),
    ),
    "hoag": bx.bilevel.HOAG(),
    "f2sa": bx.bilevel.F2SA(
        lr_outer=LR,
        noise="none",
        lambda0=10.0,
        lambda_growth=10.0,
        lambda_power=1.0,
        outer_decay=0.0,
    ),
    "penalty": bx.bilevel.PenaltyMethod(gamma_max=1e4, ramp_steps=200, lr_outer=LR),
}


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_convergence(name):
    algorithm = DETERMINISTIC[name]
    run = jax.jit(lambda: algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=600))
    res = run()
    assert res.result == bx.bilevel.RESULTS.successful
    assert int(res.num_steps) == 600
    assert Q.grad_norm_ratio(res.x) <= 1e-3
    assert res.history.outer_loss.shape == (100,)
    # the history ends near the optimum of the exact problem
    assert float(res.history.outer_loss[-1]) <= float(res.history.outer_loss[0])


STOCHASTIC = {
    "ift": lambda b: bx.bilevel.HypergradientDescent(optax.sgd(0.3 * LR), batch_size=b),
    # constant λ and steps: a noise floor that the batch size sets
    "f2sa": lambda b: bx.bilevel.F2SA(
        lr_outer=LR,
        lambda0=10.0,
        lambda_growth=0.0,
        outer_decay=0.0,
        inner_decay=0.0,
        batch_size=b,
    ),
    "penalty": lambda b: bx.bilevel.PenaltyMethod(
        gamma_max=100.0, lr_inner=0.05, lr_outer=0.3 * LR, batch_size=b
    ),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_neighbourhood_shrinks_with_batch_size(name):
    keys = jax.random.split(jax.random.key(1), 4)

    def final_ratios(batch_size):
        algorithm = STOCHASTIC[name](batch_size)
        run = lambda k: (
            algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, key=k, num_steps=400).x
        )
        xs = jax.jit(jax.vmap(run))(keys)
        return [Q.grad_norm_ratio(x) for x in xs]

    small, large = final_ratios(1), final_ratios(128)
    assert max(large) < 0.1
    assert sum(large) < 0.5 * sum(small)


SVRG = {
    "f2sa": bx.bilevel.F2SA(
        lr_outer=0.5 * LR,
        lambda0=10.0,
        lambda_growth=1.0,
        lambda_power=1.0,
        outer_decay=0.0,
        noise="none",
        inner_steps=3,
        batch_size=4,
        variance_reduction="svrg",
    ),
    "penalty": bx.bilevel.PenaltyMethod(
        gamma_max=1e3,
        lr_outer=0.5 * LR,
        y_steps=3,
        z_steps=3,
        batch_size=4,
        variance_reduction="svrg",
    ),
}


@pytest.mark.parametrize("name", sorted(SVRG))
def test_svrg_removes_the_noise_floor(name):
    """With SVRG, batches of 4 reach the deterministic accuracy (constant steps
    alone stall at a noise floor, see the test above)."""
    algorithm = SVRG[name]
    run = lambda k: algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, key=k, num_steps=400)
    res = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(2), 2))
    assert bool(jnp.all(res.result == bx.bilevel.RESULTS.successful))
    assert max(Q.grad_norm_ratio(x) for x in res.x) <= 1e-3


def test_vmap_over_seeds_matches_single_runs():
    algorithm = bx.bilevel.PenaltyMethod(lr_outer=LR, batch_size=16)
    run = lambda k: algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, key=k, num_steps=50)
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    single = jax.jit(run)(keys[1])
    assert jnp.allclose(batched.x[1], single.x, rtol=1e-10, atol=1e-12)
    assert batched.history.outer_loss.shape == (3, 50)


def test_cold_and_warm_start_agree_on_a_unique_inner_solution():
    kwargs = dict(inner_solver=bx.bilevel.GradientDescent(2000))
    warm = bx.bilevel.HypergradientDescent(optax.sgd(LR), warm_start=True, **kwargs)
    cold = bx.bilevel.HypergradientDescent(optax.sgd(LR), warm_start=False, **kwargs)
    a = warm.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=100).x
    b = cold.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=100).x
    assert jnp.allclose(a, b, rtol=1e-6)


def test_run_continues_from_state_and_shows_progress():
    algorithm = bx.bilevel.HypergradientDescent(optax.sgd(LR))
    first = algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=20)
    second = algorithm.run(
        Q.problem, Q.x0, Q.y0, Q.data, num_steps=20, state=first.state, progress=True
    )
    whole = algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=40)
    assert jnp.allclose(second.x, whole.x, rtol=1e-8)


def test_projection_keeps_x_in_the_set():
    box = lambda x: jnp.clip(x, 0.5, 2.0)
    for algorithm in [
        bx.bilevel.HypergradientDescent(optax.sgd(LR), project=box),
        bx.bilevel.PenaltyMethod(lr_outer=LR, project=box),
    ]:
        res = algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=100)
        assert float(res.x.min()) >= 0.5 and float(res.x.max()) <= 2.0
