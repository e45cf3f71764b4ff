"""`AugmentedLagrangian` through `minimize`: inequality- and bound-constrained
Hock-Schittkowski problems (sif2jax and HS118), derivatives through the KKT
conditions (finite differences, jaxopt's OSQP), vmap, infeasible problems, NaN, bad
input, float32 and an optimistix inner solver."""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import pytest

import bilevax as bx

from . import _hs118

S = bx.solvers


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _solve(problem, y0, args=None, solver=S.AugmentedLagrangian(), **kwargs):  # noqa: B008
    return jax.jit(lambda y0, args: S.minimize(problem, y0, args, solver, **kwargs))(
        y0, args
    )


# sif2jax has no optimal value for HS76; the book's is -4.6818181818
BOOK_VALUES = {"HS76": -4.681818181818182}


@pytest.mark.parametrize(
    "name", ["HS21", "HS35", "HS71", "HS76", "HS44", "HS65", "HS100", "HS113"]
)
def test_cutest_inequality_problems(name):
    # not importorskip: importing sif2jax takes minutes; `cutest.load` imports one
    # problem module
    if importlib.util.find_spec("sif2jax") is None:
        pytest.skip("needs sif2jax")
    from bilevax.datasets import cutest

    p = cutest.load(name)
    sol = _solve(p.problem, p.y0, p.args)
    assert sol.result == S.RESULTS.successful
    value = float(p.problem.objective(sol.y, p.args))
    expected = BOOK_VALUES.get(name, p.expected_objective)
    assert abs(value - expected) <= 1e-6 * max(1.0, abs(expected))
    assert float(sol.stats["kkt_residual"]) <= 1e-8


def test_hs118():
    sol = _solve(_hs118.PROBLEM, _hs118.Y0)
    assert sol.result == S.RESULTS.successful
    value = float(_hs118.PROBLEM.objective(sol.y, None))
    assert abs(value - _hs118.OPTIMAL_VALUE) <= 1e-6 * _hs118.OPTIMAL_VALUE
    assert np.all(np.asarray(_hs118.PROBLEM.ineq(sol.y, None)) <= 1e-8)
    assert np.all((sol.y >= _hs118.LOWER) & (sol.y <= _hs118.UPPER))


def _qp(Q, A, G):
    """`min ½yᵀQy + qᵀy` s.t. `Ay = b`, `Gy <= h`, with `args = (q, b, h)`."""
    return S.ConstrainedProblem(
        lambda y, a: 0.5 * y @ Q @ y + a[0] @ y,
        eq=lambda y, a: A @ y - a[1],
        ineq=lambda y, a: G @ y - a[2],
    )


def _qp_data():
    k = jax.random.split(jax.random.key(3), 6)
    M = jax.random.normal(k[0], (6, 6))
    Q = M @ M.T + jnp.eye(6)
    A = jax.random.normal(k[1], (2, 6))
    G = jax.random.normal(k[2], (4, 6))
    q = jax.random.normal(k[3], (6,))
    b = jax.random.normal(k[4], (2,))
    # h puts two inequalities active at the solution (checked below)
    h = jnp.array([-0.3, -0.2, 5.0, 5.0])
    return Q, A, G, (q, b, h)


def test_qp_derivatives_match_jaxopt_osqp_and_finite_differences():
    jaxopt = pytest.importorskip("jaxopt")
    Q, A, G, args = _qp_data()
    problem = _qp(Q, A, G)
    y0 = jnp.zeros(6)

    @jax.jit
    def ours(args):
        return S.minimize(problem, y0, args, S.AugmentedLagrangian(tol=1e-11)).y

    @jax.jit
    def theirs(args):
        q, b, h = args
        # jaxopt's default implicit-diff solve is loose (errors ~3e-3 here)
        osqp = jaxopt.OSQP(
            tol=1e-10,
            maxiter=20_000,
            eq_qp_solve="lu",
            implicit_diff_solve=functools.partial(
                jaxopt.linear_solve.solve_gmres, tol=1e-12
            ),
        )
        return osqp.run(
            params_obj=(Q, q), params_eq=(A, b), params_ineq=(G, h)
        ).params.primal

    sol = S.minimize(problem, y0, args, S.AugmentedLagrangian(tol=1e-11))
    active = np.asarray(sol.multipliers["ineq"] > 1e-6)
    assert active.sum() >= 1 and (~active).sum() >= 1
    np.testing.assert_allclose(ours(args), theirs(args), atol=1e-6)
    jac_ours = jax.jit(jax.jacobian(ours))(args)
    jac_theirs = jax.jit(jax.jacobian(theirs))(args)
    for a, b in zip(
        jax.tree.leaves(jac_ours), jax.tree.leaves(jac_theirs), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-8)
    # central finite differences along a random direction of (q, b, h)
    direction = jax.tree.map(lambda x: jnp.ones_like(x) / 7, args)
    eps = 1e-5
    plus = ours(jax.tree.map(lambda x, d: x + eps * d, args, direction))
    minus = ours(jax.tree.map(lambda x, d: x - eps * d, args, direction))
    fd = (plus - minus) / (2 * eps)
    _, jvp = jax.jit(lambda a, d: jax.jvp(ours, (a,), (d,)))(args, direction)
    np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-8)


def test_nlp_with_bounds_derivatives_match_finite_differences():
    # a nonconvex objective, an active nonlinear inequality and an active bound
    problem = S.ConstrainedProblem(
        lambda y, a: (y[0] - a[0]) ** 2 + (y[1] - a[1]) ** 2 + y[0] * y[2] + y[2] ** 2,
        ineq=lambda y, a: jnp.array([y[0] ** 2 + y[1] ** 2 - a[2]]),
        bounds=(jnp.array([-jnp.inf, 0.5, -1.0]), jnp.array([jnp.inf, jnp.inf, 1.0])),
    )
    y0 = jnp.array([0.5, 1.0, 0.0])
    args = jnp.array([2.0, 0.1, 1.0])
    solver = S.AugmentedLagrangian(tol=1e-12)
    solve = jax.jit(lambda a: S.minimize(problem, y0, a, solver).y)
    sol = S.minimize(problem, y0, args, solver)
    assert sol.result == S.RESULTS.successful
    assert float(sol.multipliers["ineq"][0]) > 1e-3  # the circle is active
    assert float(sol.multipliers["lower"][1]) > 1e-3  # so is y1 >= 0.5
    jac = jax.jit(jax.jacobian(solve))(args)
    eps = 1e-6
    for i in range(3):
        e = jnp.zeros(3).at[i].set(eps)
        fd = (solve(args + e) - solve(args - e)) / (2 * eps)
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-5, atol=1e-8)


def test_vmap_over_a_batch_of_problems():
    Q, A, G, (q, b, h) = _qp_data()
    qs = q + 0.1 * jax.random.normal(jax.random.key(9), (5, 6))
    batched = jax.vmap(
        lambda q: S.minimize(
            _qp(Q, A, G), jnp.zeros(6), (q, b, h), S.AugmentedLagrangian()
        )
    )(qs)
    assert batched.y.shape == (5, 6)
    assert bool(jnp.all(batched.result == S.RESULTS.successful))
    single = S.minimize(
        _qp(Q, A, G), jnp.zeros(6), (qs[3], b, h), S.AugmentedLagrangian()
    )
    np.testing.assert_allclose(batched.y[3], single.y, atol=1e-7)


def test_infeasible_problem_is_reported():
    problem = S.ConstrainedProblem(
        lambda y, a: y @ y,
        eq=lambda y, a: jnp.array([y[0] + y[1] - 1.0]),
        ineq=lambda y, a: jnp.array([y[0] + y[1]]),
    )
    sol = _solve(problem, jnp.zeros(2), throw=False)
    assert sol.result == S.RESULTS.infeasible
    with pytest.raises(Exception, match="RESULTS.infeasible"):
        _solve(problem, jnp.zeros(2))


def test_nan_is_reported():
    problem = S.ConstrainedProblem(
        lambda y, a: jnp.sum(jnp.log(y)),
        ineq=lambda y, a: jnp.array([1.0 - jnp.sum(y)]),
    )
    sol = _solve(problem, jnp.array([-1.0, 2.0]), throw=False)
    assert sol.result == S.RESULTS.nonfinite


def test_bound_constraints_only():
    target = jnp.array([-1.0, 0.5, 2.0])
    problem = S.ConstrainedProblem(
        lambda y, a: jnp.sum((y - a) ** 2), bounds=(jnp.zeros(3), jnp.ones(3))
    )
    solve = lambda a: S.minimize(problem, jnp.full(3, 0.5), a, S.AugmentedLagrangian())
    sol = solve(target)
    assert sol.result == S.RESULTS.successful
    np.testing.assert_allclose(sol.y, jnp.clip(target, 0, 1), atol=1e-10)
    np.testing.assert_allclose(sol.multipliers["lower"], [2.0, 0.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(sol.multipliers["upper"], [0.0, 0.0, 2.0], atol=1e-8)
    # the projection's Jacobian: identity on the free coordinate only
    jac = jax.jacobian(lambda a: solve(a).y)(target)
    np.testing.assert_allclose(jac, jnp.diag(jnp.array([0.0, 1.0, 0.0])), atol=1e-8)


def test_optimistix_inner_solver():
    problem = S.ConstrainedProblem(
        lambda y, a: jnp.log(1 + y[0] ** 2) - y[1],
        eq=lambda y, a: jnp.array([(1 + y[0] ** 2) ** 2 + y[1] ** 2 - 4]),
    )
    solver = S.AugmentedLagrangian(
        tol=1e-7, inner_solver=optx.BFGS(rtol=1e-10, atol=1e-10)
    )
    sol = _solve(problem, jnp.array([2.0, 2.0]), solver=solver)
    assert sol.result == S.RESULTS.successful
    assert abs(float(problem.objective(sol.y, None)) + 3**0.5) <= 1e-6
    bounded = S.ConstrainedProblem(
        problem.objective, bounds=(jnp.zeros(2), jnp.ones(2))
    )
    with pytest.raises(ValueError, match="cannot handle bounds"):
        S.minimize(bounded, jnp.ones(2), None, solver)


def test_bad_input():
    f = lambda y, a: y @ y
    with pytest.raises(ValueError, match="lower bound exceeds"):
        S.minimize(
            S.ConstrainedProblem(f, bounds=(jnp.ones(2), jnp.zeros(2))),
            jnp.zeros(2),
            solver=S.AugmentedLagrangian(),
        )
    with pytest.raises(ValueError, match="bounds"):
        S.minimize(
            S.ConstrainedProblem(f, bounds=(jnp.zeros(3), jnp.ones(3))),
            jnp.zeros(2),
            solver=S.AugmentedLagrangian(),
        )
    with pytest.raises(ValueError, match="1-D array"):
        S.minimize(
            S.ConstrainedProblem(f, ineq=lambda y, a: y.sum()),
            jnp.zeros(2),
            solver=S.AugmentedLagrangian(),
        )


def test_float32():
    with jax.enable_x64(False):
        problem = S.ConstrainedProblem(
            lambda y, a: jnp.sum((y - a) ** 2),
            ineq=lambda y, a: jnp.array([jnp.sum(y) - 1.0]),
            bounds=(jnp.zeros(3, jnp.float32), jnp.full(3, jnp.inf, jnp.float32)),
        )
        target = jnp.array([1.0, 0.5, -1.0], jnp.float32)
        # the default tolerance follows the dtype (1e-5 in float32)
        sol = S.minimize(
            problem, jnp.zeros(3, jnp.float32), target, S.AugmentedLagrangian()
        )
        assert sol.y.dtype == jnp.float32
        assert sol.result == S.RESULTS.successful
        np.testing.assert_allclose(sol.y, [0.75, 0.25, 0.0], atol=1e-4)


def test_float32_batch_of_projections_is_successful_and_right():
    """105 scores with |θ| up to 12 onto {p >= 0, Σp = 1, p0 - p1 <= 0.7}: in
    float32 every solve is right (against float64) and reported `successful`."""
    problem = S.ConstrainedProblem(
        lambda p, t: 0.5 * jnp.sum((p - t) ** 2),
        eq=lambda p, t: jnp.array([jnp.sum(p) - 1.0]),
        ineq=lambda p, t: jnp.array([p[0] - p[1] - 0.7]),
        bounds=(jnp.zeros(3), jnp.full(3, jnp.inf)),
    )
    theta = jax.random.uniform(jax.random.key(0), (105, 3), minval=-12, maxval=12)

    def solve(t):
        y0 = jnp.full(3, 1 / 3, t.dtype)
        return S.minimize(problem, y0, t, S.AugmentedLagrangian(), throw=False)

    reference = jax.vmap(solve)(theta)
    with jax.enable_x64(False):
        single = theta.astype(jnp.float32)
        sol = jax.vmap(solve)(single)
    assert sol.y.dtype == jnp.float32
    assert bool(jnp.all(reference.result == S.RESULTS.successful))
    assert bool(jnp.all(sol.result == S.RESULTS.successful))
    np.testing.assert_allclose(sol.y, reference.y, atol=2e-5)
    np.testing.assert_allclose(
        sol.multipliers["eq"], reference.multipliers["eq"], rtol=1e-3, atol=1e-3
    )
