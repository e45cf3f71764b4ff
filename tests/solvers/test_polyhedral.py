"""`project_polyhedron`: the KKT conditions of the projection hold, it agrees with
the box projection and with an augmented-Lagrangian solve, warm starts, infeasible
polyhedra, non-affine input and float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevax.solvers as S


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _polyhedron(seed, n=12, m=2, p=10):
    """A random non-empty polyhedron: `E v = E v0`, `A v <= A v0 + s`, a box around
    `v0`."""
    k = jax.random.split(jax.random.key(seed), 4)
    v0 = jax.random.normal(k[0], (n,))
    E = jax.random.normal(k[1], (m, n))
    A = jax.random.normal(k[2], (p, n))
    slack = jnp.abs(jax.random.normal(k[3], (p,))) * jnp.where(jnp.arange(p) < 3, 0, 1)
    eq = lambda v: E @ (v - v0)
    ineq = lambda v: A @ (v - v0) - slack
    bounds = (v0 - 1.0, v0 + jnp.where(jnp.arange(n) % 2 == 0, 1.0, jnp.inf))
    return eq, ineq, bounds, m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kkt_conditions_hold(seed):
    eq, ineq, (lower, upper), m = _polyhedron(seed)
    target = 3 * jax.random.normal(jax.random.key(10 + seed), lower.shape)
    sol = jax.jit(lambda t: S.project_polyhedron(t, eq, ineq, (lower, upper)))(target)
    assert sol.result == S.RESULTS.successful
    v, mu = sol.y, sol.dual[m:]
    # primal feasibility, dual feasibility, complementarity
    assert float(jnp.max(jnp.abs(eq(v)))) <= 1e-8
    assert float(jnp.max(ineq(v))) <= 1e-8
    assert bool(jnp.all((v >= lower) & (v <= upper)))
    assert float(jnp.min(mu)) >= 0
    assert float(jnp.max(jnp.abs(mu * ineq(v)))) <= 1e-8
    # stationarity: v minimises ½‖v - t‖² + uᵀa(v) over the box
    jac = jax.jacfwd(lambda w: jnp.concatenate([eq(w), ineq(w)]))(v)
    np.testing.assert_allclose(v, jnp.clip(target - jac.T @ sol.dual, lower, upper))
    # and it agrees with an augmented-Lagrangian solve of the same projection
    problem = S.ConstrainedProblem(
        lambda w, t: 0.5 * jnp.sum((w - t) ** 2),
        eq=lambda w, _: eq(w),
        ineq=lambda w, _: ineq(w),
        bounds=(lower, upper),
    )
    reference = S.minimize(
        problem, jnp.clip(target, lower, upper), target, S.AugmentedLagrangian()
    )
    np.testing.assert_allclose(v, reference.y, atol=1e-6)


def test_box_only_is_the_clip_and_inside_points_stay():
    lower, upper = -jnp.ones(5), jnp.ones(5)
    target = jnp.array([-3.0, -0.5, 0.0, 0.5, 3.0])
    sol = S.project_polyhedron(target, bounds=(lower, upper))
    np.testing.assert_allclose(sol.y, jnp.clip(target, lower, upper))
    # a point of the polyhedron (the projection of its box corner) stays put
    eq, ineq, bounds, _ = _polyhedron(0)
    inside = S.project_polyhedron(bounds[0], eq, ineq, bounds).y
    again = S.project_polyhedron(inside, eq, ineq, bounds)
    np.testing.assert_allclose(again.y, inside, atol=1e-9)
    assert int(again.num_steps) <= 1


def test_warm_start_from_a_nearby_projection():
    eq, ineq, bounds, _ = _polyhedron(3)
    target = 3 * jax.random.normal(jax.random.key(0), bounds[0].shape)
    first = S.project_polyhedron(target, eq, ineq, bounds)
    nearby = target + 1e-3 * jax.random.normal(jax.random.key(1), target.shape)
    cold = S.project_polyhedron(nearby, eq, ineq, bounds)
    warm = S.project_polyhedron(nearby, eq, ineq, bounds, dual0=first.dual)
    np.testing.assert_allclose(warm.y, cold.y, atol=1e-8)
    assert int(warm.num_steps) <= int(cold.num_steps)


def test_infeasible_polyhedron_is_reported():
    # v1 <= -1 and v1 >= 1
    ineq = lambda v: jnp.array([v[0] + 1, 1 - v[0]])
    sol = S.project_polyhedron(jnp.zeros(2), ineq=ineq)
    assert sol.result == S.RESULTS.infeasible


def test_bad_input():
    with pytest.raises(Exception, match="not affine"):
        S.project_polyhedron(jnp.ones(3), ineq=lambda v: jnp.array([v @ v - 1]))
    with pytest.raises(ValueError, match="must be 1-D"):
        S.project_polyhedron(jnp.ones((2, 2)), ineq=lambda v: v[0])
    with pytest.raises(ValueError, match="dual0"):
        S.project_polyhedron(jnp.ones(3), ineq=lambda v: v, dual0=jnp.zeros(2))


def test_float32():
    with jax.enable_x64(False):
        eq, ineq, bounds, _ = _polyhedron(4)
        bounds = tuple(b.astype(jnp.float32) for b in bounds)
        target = 3 * jax.random.normal(jax.random.key(0), bounds[0].shape)
        sol = S.project_polyhedron(target, eq, ineq, bounds)
        assert sol.y.dtype == jnp.float32
        assert sol.result == S.RESULTS.successful
        assert float(jnp.max(ineq(sol.y))) <= 1e-4
