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


# ---------------------------------------------------------------------------------
# The KKT route on a lower level that becomes infeasible (issue 18.6): the run ends
# with `inner_failed` and finite iterates whatever the outer loss; `hypergradient`
# returns the status with `throw=False` and raises with `throw=True`.
# ---------------------------------------------------------------------------------

_INFEASIBLE_BELOW_ONE = {  # lower level min (y-4)² s.t. y <= x, y >= 1
    "inner": lambda x, y, b: jnp.sum((y - 4) ** 2),
    "inner_constraints": lambda x, y: jnp.concatenate([y - x, 1 - y]),
}
_OUTERS = {
    "x-and-y": lambda x, y, b: jnp.sum(0.5 * x**2 + 0.1 * (y - 4) ** 2),
    "x-only": lambda x, y, b: 0.5 * jnp.sum(x**2),
    "y-only": lambda x, y, b: jnp.sum((y + 3.0) ** 2),
}


@pytest.mark.parametrize(
    "outer",
    [
        "x-and-y",
        pytest.param("x-only", marks=pytest.mark.slow),
        pytest.param("y-only", marks=pytest.mark.slow),
    ],
)
def test_kkt_route_reports_an_infeasible_lower_level(outer):
    import optax

    problem = bx.bilevel.BilevelProblem(outer=_OUTERS[outer], **_INFEASIBLE_BELOW_ONE)
    solver = bx.bilevel.HypergradientDescent(
        optax.sgd(0.3), inner_solver=bx.bilevel.ConstrainedInner()
    )
    result = jax.jit(
        lambda x0, y0: solver.run(problem, x0, y0, num_steps=30, throw=False)
    )(jnp.array([3.0]), jnp.zeros(1))
    assert result.result == bx.bilevel.RESULTS.inner_failed
    assert jnp.all(jnp.isfinite(result.x)) and jnp.all(jnp.isfinite(result.y))
    assert float(result.x[0]) < 1.0  # held at the x where the lower level failed


def _two_dim_infeasible():
    """min ‖y - 1‖² s.t. y0 + y1 = x, y >= 0: infeasible for x < 0."""
    return bx.bilevel.BilevelProblem(
        outer=lambda x, y, b: jnp.sum((y - 2.0) ** 2) + jnp.sum(x**2),
        inner=lambda x, y, b: jnp.sum((y - 1.0) ** 2),
        inner_constraints=lambda x, y: -y,
        inner_equalities=lambda x, y: jnp.atleast_1d(jnp.sum(y) - x[0]),
    )


@pytest.mark.parametrize(
    "problem, x_bad, x_good, grad_good",
    [
        (
            bx.bilevel.BilevelProblem(
                outer=_OUTERS["x-and-y"], **_INFEASIBLE_BELOW_ONE
            ),
            jnp.array([0.5]),
            jnp.array([2.0]),
            # y* = x on [1, 4]: d/dx (½x² + 0.1(x-4)²) = x + 0.2(x - 4)
            jnp.array([2.0 + 0.2 * (2.0 - 4.0)]),
        ),
        (
            _two_dim_infeasible(),
            jnp.array([-1.0]),
            jnp.array([3.0]),
            # y* = (x/2, x/2) for x >= 0: d/dx (2(x/2 - 2)² + x²) = x - 4 + 2x
            jnp.array([3.0 * 3.0 - 4.0]),
        ),
    ],
    ids=["interval", "simplex-like"],
)
def test_hypergradient_returns_the_inner_status(problem, x_bad, x_good, grad_good):
    inner = bx.bilevel.ConstrainedInner()
    y0 = jnp.zeros(1) if problem.inner_equalities is None else jnp.zeros(2)
    run = jax.jit(
        lambda x: bx.bilevel.hypergradient(problem, x, y0, inner, throw=False)
    )
    value, grad, y, stats = run(x_good)
    assert not bool(stats.inner_failed)
    assert jnp.allclose(grad, grad_good, atol=1e-5)
    value, grad, y, stats = run(x_bad)
    assert bool(stats.inner_failed)
    assert jnp.all(jnp.isfinite(grad)) and jnp.all(grad == 0)
    with pytest.raises(Exception, match="lower-level solve failed"):
        bx.bilevel.hypergradient(problem, x_bad, y0, inner)


# y*(x) = x, F(x) = ½(x - 2)² + ½x²: F'(1.5) = 1; an inner solve stopped near
# y0 = 0 gives (y - 2) + x ≈ -0.5, the wrong sign
_SIGN = bx.bilevel.BilevelProblem(
    outer=lambda x, y, b: 0.5 * jnp.sum((y - 2.0) ** 2) + 0.5 * jnp.sum(x**2),
    inner=lambda x, y, b: 0.5 * jnp.sum(y**2) - jnp.sum(x * y),
)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_unconverged_inner_solve_is_reported(dtype):
    x, y0 = jnp.full(1, 1.5, dtype), jnp.zeros(1, dtype)
    short = bx.bilevel.GradientDescent(num_steps=10, stepsize=1e-3)
    hyper = lambda inner, **kw: bx.bilevel.hypergradient(_SIGN, x, y0, inner, **kw)
    _, grad, _, stats = hyper(short, throw=False)
    assert float(grad[0]) < 0  # wrong sign: why it must not pass silently
    assert stats.inner_result == bx.solvers.RESULTS.max_steps_reached
    assert not bool(stats.inner_failed)  # not diverging, just too short
    assert "inner_result=max_steps_reached" in repr(stats)
    if dtype == jnp.float32:
        return  # the rest compiles the same programs again
    with pytest.raises(Exception, match="did not converge.*more steps"):
        hyper(short)
    # the remedies: enough steps, or a tolerance that accepts it
    _, grad, _, stats = hyper(bx.bilevel.GradientDescent(num_steps=10))
    assert stats.inner_result == bx.solvers.RESULTS.successful
    assert abs(float(grad[0]) - 1.0) <= 1e-4
    hyper(short, inner_rtol=float("inf"))


def test_growing_inner_residual_is_a_failure():
    x, y0 = jnp.full(1, 1.5), jnp.zeros(1)
    diverging = bx.bilevel.GradientDescent(num_steps=20, stepsize=2.5)
    hyper = lambda **kw: bx.bilevel.hypergradient(_SIGN, x, y0, diverging, **kw)
    _, _, _, stats = hyper(throw=False)
    assert bool(stats.inner_failed)
    with pytest.raises(Exception, match="residual ‖∇_y g‖ grew"):
        hyper()


def test_runs_count_unconverged_inner_steps():
    """Warm-started HGD with few inner steps: a successful run that counts the
    steps whose inner solve stopped short; a converged one counts none."""
    import optax

    def run(inner):
        solver = bx.bilevel.HypergradientDescent(optax.sgd(0.2), inner_solver=inner)
        return solver.run(_SIGN, jnp.zeros(1), jnp.zeros(1), num_steps=20)

    short = run(bx.bilevel.GradientDescent(num_steps=2, stepsize=0.1))
    assert short.result == bx.bilevel.RESULTS.successful
    # all but the first step, whose start y0 = x0 = 0 is the inner solution
    assert int(short.inner_unconverged_steps) == 19
    assert "inner_unconverged_steps=19" in repr(short)
    warning = "\nWarning: at 19 of the 20 steps since `init` the inner solve stopped"
    assert warning in repr(short) and warning in str(short)
    converged = run(bx.bilevel.GradientDescent())
    assert int(converged.inner_unconverged_steps) == 0
    assert "Warning" not in repr(converged)
    hoag = bx.bilevel.HOAG().run(_SIGN, jnp.zeros(1), jnp.zeros(1), num_steps=20)
    assert int(hoag.inner_unconverged_steps) == 0


def test_unrolled_inner_result_is_successful_for_a_finite_unconverged_unroll():
    """Unrolled: no tolerance; `successful` means the iterations ran and are finite,
    the hypergradient is the exact derivative of them, `inner_residual` says how
    far from the inner solution y* = x they stopped; nothing raises."""
    x, y0 = jnp.full(1, 1.5), jnp.zeros(1)
    short = bx.bilevel.GradientDescent(num_steps=2, stepsize=0.1)
    _, grad, y, stats = bx.bilevel.hypergradient(
        _SIGN, x, y0, short, bx.implicit.UnrolledAdjoint()
    )
    assert stats.inner_result == bx.solvers.RESULTS.successful
    # y_k = x (1 - 0.9^k): y_2 = 0.19 x, residual |y_2 - x| = 0.81 x
    assert jnp.allclose(y, 0.19 * x)
    assert jnp.allclose(stats.inner_residual, 0.81 * 1.5)
    # F = ½(0.19x - 2)² + ½x², dF/dx = 0.19 (0.19x - 2) + x
    assert jnp.allclose(grad, 0.19 * (0.19 * x - 2) + x)


def test_failed_adjoint_solve_names_solver_residual_and_remedy():
    H = jnp.diag(jnp.array([1.0, 10.0, 100.0]))
    problem = bx.bilevel.BilevelProblem(
        outer=lambda x, y, b: 0.5 * jnp.sum((y - 1) ** 2),
        inner=lambda x, y, b: 0.5 * y @ H @ y - x @ y,
    )
    adjoint = bx.implicit.ImplicitAdjoint(bx.implicit.CG(rtol=1e-12, max_steps=1))
    with pytest.raises(
        Exception,
        match=r"(?s)`hypergradient`: .*status `lineax.RESULTS.max_steps_reached`.*"
        r"`stats.linear_result`.*CG reached a relative residual between.*lineax.LU",
    ):
        bx.bilevel.hypergradient(
            problem, jnp.ones(3), jnp.zeros(3), bx.bilevel.LBFGS(), adjoint
        )


# y*(x) = x / (1 + x²) coordinatewise: h(x) = Σ (y* - 0.3)² + 0.1‖x‖²
_CLOSED = bx.bilevel.BilevelProblem(
    outer=lambda x, y, b: jnp.sum((y - 0.3) ** 2) + 0.1 * jnp.sum(x**2),
    inner=lambda x, y, b: 0.5 * jnp.sum((1 + x**2) * y**2) - jnp.sum(x * y),
)


def _h(x):
    return jnp.sum((x / (1 + x**2) - 0.3) ** 2) + 0.1 * jnp.sum(x**2)


@pytest.mark.parametrize(
    "inner_solver",
    [bx.bilevel.GradientDescent(), bx.bilevel.LBFGS(), bx.bilevel.ConstrainedInner()],
    ids=["gd", "lbfgs", "kkt"],
)
def test_outputs_have_their_exact_derivatives(inner_solver):
    """The value, the inner solution and the hypergradient returned are functions of
    `x` whose derivatives are exact (once only their direct terms were: the inner
    solution was a constant), so an outer Newton or Hessian-vector step is right."""
    x = jnp.array([0.5, 1.5, -0.7])
    out = lambda x_: bx.bilevel.hypergradient(_CLOSED, x_, jnp.zeros(3), inner_solver)
    rtol = 1e-6
    assert jnp.allclose(out(x)[1], jax.grad(_h)(x), rtol=rtol)
    assert jnp.allclose(jax.grad(lambda x_: out(x_)[0])(x), jax.grad(_h)(x), rtol=rtol)
    dy = jax.jacfwd(lambda x_: x_ / (1 + x_**2))(x)
    assert jnp.allclose(jax.jacrev(lambda x_: out(x_)[2])(x), dy, rtol=rtol)
    hessian = jax.hessian(_h)(x)
    assert jnp.allclose(jax.jacfwd(lambda x_: out(x_)[1])(x), hessian, rtol=rtol)
    assert jnp.allclose(jax.jacrev(lambda x_: out(x_)[1])(x), hessian, rtol=rtol)
