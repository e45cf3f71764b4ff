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
    sol = S.project_polyhedron(jnp.zeros(2), ineq=ineq, throw=False)
    assert sol.result == S.RESULTS.infeasible
    with pytest.raises(Exception, match="project_polyhedron` failed.*infeasible"):
        jax.block_until_ready(S.project_polyhedron(jnp.zeros(2), ineq=ineq).y)


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


def _central_differences(fn, x, eps=1e-6):
    """By one `vmap`ped call (one compilation) over the `2 n` shifted points."""
    shifts = eps * jnp.eye(x.size)
    values = jax.vmap(fn)(jnp.concatenate([x + shifts, x - shifts]))
    return (values[: x.size] - values[x.size :]).T / (2 * eps)


def test_jacobian_closed_forms_active_and_inactive():
    halfplane = lambda t: (
        S.project_polyhedron(t, ineq=lambda v: jnp.array([v[0] + v[1] - 1.0])).y
    )
    active = jnp.array([[0.5, -0.5], [-0.5, 0.5]])
    np.testing.assert_allclose(jax.jacrev(halfplane)(jnp.array([2.0, 1.0])), active)
    np.testing.assert_allclose(jax.jacfwd(halfplane)(jnp.array([2.0, 1.0])), active)
    np.testing.assert_allclose(
        jax.jacrev(halfplane)(jnp.zeros(2)), jnp.eye(2), atol=1e-12
    )
    # the simplex: equality and box, the third coordinate on its bound
    simplex = lambda t: (
        S.project_polyhedron(
            t, eq=lambda v: jnp.array([jnp.sum(v) - 1.0]), bounds=(0.0, 1.0)
        ).y
    )
    expected = jnp.array([[0.5, -0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    target = jnp.array([0.9, 0.8, -0.2])
    np.testing.assert_allclose(jax.jacrev(simplex)(target), expected, atol=1e-12)


@pytest.mark.parametrize("seed", [0, pytest.param(5, marks=pytest.mark.slow)])
def test_jacobian_matches_finite_differences(seed):
    eq, ineq, bounds, _ = _polyhedron(seed, n=6, m=1, p=5)
    target = 2 * jax.random.normal(jax.random.key(20 + seed), (6,))
    project = lambda t: S.project_polyhedron(t, eq, ineq, bounds).y
    reference = _central_differences(project, target)
    np.testing.assert_allclose(jax.jacrev(project)(target), reference, atol=1e-6)
    np.testing.assert_allclose(jax.jacfwd(project)(target), reference, atol=1e-6)
    # with respect to the bounds and an offset the constraints close over
    shifted = lambda b: (
        S.project_polyhedron(
            target, eq, lambda v: ineq(v) - b[0], (bounds[0] + b[1], bounds[1])
        ).y
    )
    b = jnp.array([0.3, 0.05])
    np.testing.assert_allclose(
        jax.jacrev(shifted)(b), _central_differences(shifted, b), atol=1e-6
    )


def test_jacobian_under_vmap_and_in_projected_gradient():
    from bilevax.implicit import conditions, custom_root

    eq, ineq, bounds, _ = _polyhedron(1, n=6, m=1, p=5)
    project = lambda t: S.project_polyhedron(t, eq, ineq, bounds).y
    targets = 2 * jax.random.normal(jax.random.key(3), (3, 6))
    batched = jax.vmap(jax.jacrev(project))(targets)
    for i in range(3):
        np.testing.assert_allclose(batched[i], jax.jacrev(project)(targets[i]))
    # jaxopt's `projection_polyhedron` pattern: min ½‖y - c‖² over {y0 + y1 <= θ}
    c = jnp.array([2.0, 1.0])
    f = lambda y: 0.5 * jnp.sum((y - c) ** 2)
    halfplane = lambda v, theta: (
        S.project_polyhedron(v, ineq=lambda w: jnp.array([w[0] + w[1] - theta])).y
    )
    solve = custom_root(conditions.projected_gradient(f, halfplane))(
        lambda init, theta: halfplane(c, theta)
    )
    np.testing.assert_allclose(solve(None, 1.0), [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(jax.jacobian(solve, argnums=1)(None, 1.0), [0.5, 0.5])


def test_second_order_through_the_projection():
    """`jax.hessian` through the projection: the adjoint solve's cotangent has a
    multipliers' block the loss does not reach (a symbolic zero under second order),
    which once crashed JAX's JVP rule of `custom_linear_solve`."""
    # half-plane: y = c - (Σc - 1)/2 on the active face, J = I - 11ᵀ/2, and
    # H = Jᵀ diag(6y) J for the loss Σ y³ (J constant on the face)
    halfplane = lambda t: (
        S.project_polyhedron(t, ineq=lambda v: jnp.array([v[0] + v[1] - 1.0])).y
    )
    loss = lambda t: jnp.sum(halfplane(t) ** 3)
    c = jnp.array([2.0, 1.0])
    J = jnp.eye(2) - 0.5
    expected = J.T @ jnp.diag(6 * halfplane(c)) @ J
    np.testing.assert_allclose(jax.hessian(loss)(c), expected, atol=1e-10)
    np.testing.assert_allclose(jax.jacfwd(jax.grad(loss))(c), expected, atol=1e-10)


def test_second_order_on_a_random_polyhedron():
    """Equalities, inequalities and a box: against differences of the gradient."""
    eq, ineq, bounds, _ = _polyhedron(2, n=5, m=1, p=4)
    target = 2 * jax.random.normal(jax.random.key(7), (5,))
    loss = lambda t: jnp.sum(jnp.sin(S.project_polyhedron(t, eq, ineq, bounds).y))
    reference = _central_differences(jax.grad(loss), target)
    np.testing.assert_allclose(jax.hessian(loss)(target), reference, atol=1e-6)
