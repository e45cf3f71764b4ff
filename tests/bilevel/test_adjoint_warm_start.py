"""Warm-started adjoint solves (issue 24): the previous adjoint vector as CG's
initial guess gives the cold hypergradient to the solve tolerance."""

import jax.numpy as jnp
import lineax as lx
import optax

import bilevax as bx

from ._quadratic import Quadratic

Q = Quadratic(n=8)
INNER = bx.bilevel.LBFGS(200)


def test_hypergradient_from_the_previous_adjoint_vector():
    x = Q.x0 + 0.3
    *_, first = bx.bilevel.hypergradient(Q.problem, x, Q.y0, INNER, data=Q.data)
    x2 = x + 1e-2  # the next outer step
    _, cold, _, cold_stats = bx.bilevel.hypergradient(
        Q.problem, x2, Q.y0, INNER, data=Q.data
    )
    _, warm, _, warm_stats = bx.bilevel.hypergradient(
        Q.problem, x2, Q.y0, INNER, data=Q.data, adjoint_y0=first.adjoint
    )
    exact = Q.grad_h(x2)
    for grad in (cold, warm):
        assert jnp.linalg.norm(grad - exact) <= 1e-8 * jnp.linalg.norm(exact)
    assert warm_stats.linear_result == lx.RESULTS.successful
    assert int(warm_stats.linear_steps) < int(cold_stats.linear_steps)
    # the adjoint vector solves H v = ∇_y f
    residual = Q.H @ warm_stats.adjoint - (Q.y_star(x2) - Q.y_t)
    assert jnp.linalg.norm(residual) <= 1e-8 * jnp.linalg.norm(Q.y_star(x2) - Q.y_t)


def test_a_warm_started_run_agrees_with_a_cold_one():
    # The inner problem is strongly convex: warm and cold starts (inner and adjoint)
    # differ only by the solve tolerance.
    def run(warm):
        solver = bx.bilevel.HypergradientDescent(
            optax.adam(0.05), INNER, warm_start=warm
        )
        return solver.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=20)

    warm, cold = run(True), run(False)
    assert jnp.linalg.norm(warm.x - cold.x) <= 1e-7 * jnp.linalg.norm(cold.x)
    hoag = bx.bilevel.HOAG(INNER).run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=20)
    assert hoag.result == bx.bilevel.RESULTS.successful
    assert Q.grad_norm_ratio(hoag.x) < Q.grad_norm_ratio(Q.x0)
