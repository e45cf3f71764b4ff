"""Hypergradients of every adjoint against the exact one of a quadratic problem."""

import jax
import jax.numpy as jnp
import lineax as lx
import pytest

import bilevax as bx

from ._quadratic import Quadratic

Q = Quadratic()


def _rel_error(adjoint, solver, **kwargs):
    x = Q.x0 + 0.3
    value, grad, y, stats = jax.jit(
        lambda x: bx.bilevel.hypergradient(
            Q.problem, x, Q.y0, solver, adjoint, Q.data, **kwargs
        )
    )(x)
    exact = Q.grad_h(x)
    return float(jnp.linalg.norm(grad - exact) / jnp.linalg.norm(exact)), y, stats


@pytest.mark.parametrize(
    "solver", [bx.bilevel.GradientDescent(5000), bx.bilevel.LBFGS(1000)]
)
def test_implicit_matches_exact(solver):
    err, y, stats = _rel_error(bx.implicit.ImplicitAdjoint(), solver)
    assert err <= 1e-6
    assert float(jnp.linalg.norm(y - Q.y_star(Q.x0 + 0.3))) <= 1e-6
    assert int(stats.linear_steps) > 0
    assert stats.linear_result == lx.RESULTS.successful


@pytest.mark.parametrize(
    "linear_solver",
    [
        bx.implicit.Neumann(steps=400),
        lx.GMRES(rtol=1e-10, atol=1e-10),
        lx.LU(),
    ],
)
def test_implicit_with_other_linear_solvers(linear_solver):
    err, _, _ = _rel_error(
        bx.implicit.ImplicitAdjoint(linear_solver), bx.bilevel.GradientDescent(5000)
    )
    assert err <= 1e-6


def test_unrolled_and_truncated_long_horizon():
    solver = bx.bilevel.GradientDescent(400)
    err_unrolled, _, stats = _rel_error(bx.implicit.UnrolledAdjoint(), solver)
    err_truncated, _, _ = _rel_error(bx.implicit.TruncatedAdjoint(100), solver)
    assert err_unrolled <= 1e-8
    assert err_truncated <= 1e-8
    assert int(stats.inner_steps) == 400


def test_short_unroll_is_biased_and_truncation_more_so():
    solver = bx.bilevel.GradientDescent(10)
    err_unrolled, _, _ = _rel_error(bx.implicit.UnrolledAdjoint(), solver)
    err_truncated, _, _ = _rel_error(bx.implicit.TruncatedAdjoint(2), solver)
    assert 1e-3 < err_unrolled < err_truncated


def test_hoag_tolerance_controls_accuracy():
    solver = bx.bilevel.GradientDescent(5000)
    adjoint = bx.implicit.ImplicitAdjoint(bx.implicit.CG(rtol=1e-3))
    loose, _, _ = _rel_error(adjoint, solver, tol=1e-3)
    tight, _, _ = _rel_error(bx.implicit.ImplicitAdjoint(), solver, tol=1e-10)
    assert tight <= 1e-8 < loose <= 1e-2


def test_value_is_the_outer_loss_at_the_solution():
    x = Q.x0 + 0.3
    value, _, y, _ = bx.bilevel.hypergradient(
        Q.problem, x, Q.y0, bx.bilevel.GradientDescent(5000), data=Q.data
    )
    assert jnp.allclose(value, Q.problem.outer(x, Q.y_star(x), Q.data[1]), rtol=1e-9)
