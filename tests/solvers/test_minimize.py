"""`minimize`, the driver: failures raise by default naming the status (eagerly,
under `jit` and `vmap`), and repeated eager calls reuse one compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevax as bx

S = bx.solvers
EQ = lambda y, a: jnp.array([jnp.sum(y) - 1.0])  # noqa: E731


def _infeasible():
    return S.ConstrainedProblem(
        lambda y, a: y @ y,
        eq=lambda y, a: jnp.array([y[0] + y[1] - 1.0]),
        ineq=lambda y, a: jnp.array([y[0] + y[1]]),
    )


def test_failure_raises_by_default_with_status_and_remedy():
    solver = S.AugmentedLagrangian()
    with pytest.raises(Exception, match="RESULTS.infeasible") as info:
        jax.block_until_ready(S.minimize(_infeasible(), jnp.zeros(2), None, solver).y)
    assert "throw=False" in str(info.value)
    problem = S.ConstrainedProblem(lambda y, a: jnp.sum(jnp.exp(y - a) + y**4), eq=EQ)
    slow = S.AugmentedLagrangian(max_steps=1, inner_max_steps=1)
    jitted = jax.jit(lambda a: S.minimize(problem, jnp.zeros(2), a, slow).y)
    with pytest.raises(Exception, match="RESULTS.max_steps_reached.*max_steps"):
        jax.block_until_ready(jitted(jnp.array([3.0, -2.0])))


def test_failure_in_a_batch_raises_under_vmap():
    problem = S.ConstrainedProblem(
        lambda y, a: y @ y, ineq=lambda y, a: jnp.array([a - y[0], y[0]])
    )  # y0 >= a and y0 <= 0: infeasible for a > 0
    solve = lambda a: S.minimize(problem, jnp.zeros(2), a, S.AugmentedLagrangian())
    ok = jax.vmap(solve)(jnp.array([-1.0, -0.5]))
    assert bool(jnp.all(ok.result == S.RESULTS.successful))
    with pytest.raises(Exception, match="RESULTS.infeasible"):
        jax.block_until_ready(jax.vmap(solve)(jnp.array([-1.0, 1.0])).y)


def test_repeated_eager_calls_do_not_retrace():
    traces = []

    def objective(y, a):
        traces.append(1)
        return 0.5 * jnp.sum((y - a) ** 2)

    problem = S.ConstrainedProblem(objective, eq=EQ)
    solver = S.AugmentedLagrangian()
    first = S.minimize(problem, jnp.zeros(3), jnp.arange(3.0), solver)
    traced = len(traces)
    assert traced > 0
    for a in (jnp.arange(3.0) + 1, jnp.ones(3)):
        again = S.minimize(problem, jnp.zeros(3), a, solver)
    assert len(traces) == traced  # the same problem objects hit the cache
    np.testing.assert_allclose(first.y, jnp.arange(3.0) - 2 / 3, atol=1e-5)
    np.testing.assert_allclose(again.y, jnp.full(3, 1 / 3), atol=1e-5)
    S.minimize(problem, jnp.zeros(4), jnp.ones(4), solver)  # new shapes: retrace
    assert len(traces) > traced


def _central_differences(fn, x, eps=1e-6):
    shifts = eps * jnp.eye(x.size)
    values = jax.vmap(fn)(jnp.concatenate([x + shifts, x - shifts]))
    return (values[: x.size] - values[x.size :]).T / (2 * eps)


def test_redundant_constraints_are_solved_and_differentiated():
    """A duplicated (scaled) linear and a duplicated nonlinear equality: the
    multipliers are not unique, the solution and its derivative are."""
    problem = S.ConstrainedProblem(
        lambda y, a: 0.5 * jnp.sum((y - a) ** 2) + 0.1 * jnp.sum(y**4),
        eq=lambda y, a: jnp.array(
            [
                y[0] + y[1] + y[2] - 1.0,
                2.0 * (y[0] + y[1] + y[2] - 1.0),
                y[0] ** 2 + y[1] - 0.5,
                -3.0 * (y[0] ** 2 + y[1] - 0.5),
            ]
        ),
    )
    solver = S.AugmentedLagrangian(tol=1e-10)
    solve = lambda a: S.minimize(problem, jnp.full(3, 0.3), a, solver)
    a = jnp.array([0.8, -0.4, 1.5])
    sol = solve(a)
    assert sol.result == S.RESULTS.successful
    np.testing.assert_allclose(problem.eq(sol.y, a), 0.0, atol=1e-9)
    lam = sol.multipliers["eq"]  # minimum norm: along (1, 2) and (1, -3)
    np.testing.assert_allclose([2 * lam[0] - lam[1], 3 * lam[2] + lam[3]], 0, atol=1e-7)
    y = lambda a: solve(a).y
    reference = _central_differences(y, a)
    np.testing.assert_allclose(jax.jacrev(y)(a), reference, atol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(y)(a), reference, atol=1e-6)


def test_solver_must_be_a_constrained_solver():
    problem = S.ConstrainedProblem(lambda y, a: y @ y, eq=EQ)
    with pytest.raises(TypeError, match="AbstractConstrainedSolver"):
        S.minimize(problem, jnp.zeros(2), None, solver="SketchedNewton")
