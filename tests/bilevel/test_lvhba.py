"""`LVHBA` on toy problems with known solutions (an active constraint coupling both
levels; a lower level with a continuum of solutions), its stochastic form under
`vmap` over seeds, infeasible starts and infeasible constraints, and the sets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevax as bx

B = bx.bilevel


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# lower level min_θ ½θ² - 4θ s.t. θ <= x; upper level ½(x-1)² + ½(θ-3)²:
# x* = θ* = 2, the constraint is active with multiplier 2
COUPLED = B.BilevelProblem(
    outer=lambda x, y, b: 0.5 * jnp.sum((x - 1) ** 2) + 0.5 * jnp.sum((y - 3) ** 2),
    inner=lambda x, y, b: jnp.sum(0.5 * y**2 - 4 * y),
    inner_constraints=lambda x, y: y - x,
)


@pytest.mark.parametrize("affine", [False, True])
def test_active_coupled_constraint(affine):
    # the projection onto C: an augmented-Lagrangian solve, or the exact polyhedral
    # projection for affine constraints
    solver = B.LVHBA(affine=affine)
    result = jax.jit(lambda x0, y0: solver.run(COUPLED, x0, y0, num_steps=6000))(
        jnp.zeros(1), jnp.zeros(1)
    )
    assert result.result == B.RESULTS.successful
    assert float(jnp.abs(result.x[0] - 2)) <= 1e-3
    assert float(jnp.abs(result.y[0] - 2)) <= 1e-3
    assert float(jnp.abs(result.state.lam[0] - 2)) <= 1e-2


def _llc(n):
    """The authors' LLC toy: lower level `min ½‖y1‖² - xᵀy1 + 1ᵀy2` s.t.
    `1ᵀx + 1ᵀy1 + 1ᵀy2 = 0` (solutions `y1 = x + 1`, `y2` anywhere on the
    hyperplane), upper level `½‖x - y2‖² + ½‖y1 - 1‖²`; `x* = -0.3`,
    `y1* = 0.7`, `y2* = -0.4` (all coordinates)."""
    total = lambda x, y: jnp.sum(x) + jnp.sum(y[0]) + jnp.sum(y[1])
    problem = B.BilevelProblem(
        outer=lambda x, y, b: (
            0.5 * jnp.sum((x - y[1]) ** 2) + 0.5 * jnp.sum((y[0] - 1) ** 2)
        ),
        inner=lambda x, y, b: 0.5 * jnp.sum(y[0] ** 2) - x @ y[0] + jnp.sum(y[1]),
        inner_equalities=lambda x, y: jnp.array([total(x, y)]),
    )

    def hyperplane(x, y):
        s = total(x, y) / (3 * n)
        return x - s, (y[0] - s, y[1] - s)

    return problem, hyperplane


def test_lower_level_with_many_solutions():
    n = 10
    problem, hyperplane = _llc(n)
    solver = B.LVHBA(
        alpha=0.1,
        beta=0.1,
        eta=0.1,
        gamma1=1.0,
        gamma2=1.0,
        penalty=100.0,
        multiplier0=1.0,
        projection=hyperplane,
    )
    x0, y0 = 10 * jnp.ones(n), (10 * jnp.ones(n), 10 * jnp.ones(n))
    result = jax.jit(lambda x0, y0: solver.run(problem, x0, y0, num_steps=30_000))(
        x0, y0
    )
    x_star = -0.3 * jnp.ones(n)
    assert float(jnp.linalg.norm(result.x - x_star) / jnp.linalg.norm(x_star)) <= 1e-3
    np.testing.assert_allclose(result.y[0], 0.7, atol=2e-3)
    np.testing.assert_allclose(result.y[1], -0.4, atol=2e-3)


def test_stochastic_form_under_vmap_over_seeds():
    # the lower level is a mean over samples a_i with mean 4: minibatches are noisy
    a = 4 + jax.random.normal(jax.random.key(1), (256,))
    a = a - a.mean() + 4
    problem = B.BilevelProblem(
        outer=COUPLED.outer,
        inner=lambda x, y, batch: jnp.mean(0.5 * y[0] ** 2 - batch * y[0]),
        inner_constraints=COUPLED.inner_constraints,
    )
    solver = B.LVHBA(batch_size=16)
    run = lambda key: solver.run(
        problem, jnp.zeros(1), jnp.zeros(1), (a, None), key=key, num_steps=4000
    )
    results = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 4))
    assert results.x.shape == (4, 1)
    assert bool(jnp.all(results.result == B.RESULTS.successful))
    assert float(jnp.max(jnp.abs(results.x - 2))) <= 0.1
    assert float(jnp.max(results.y - results.x)) <= 1e-6  # feasible


@pytest.mark.parametrize("affine", [False, True])
def test_infeasible_start_is_projected(affine):
    # y0 = 5 > x0 = 0 violates y <= x; X = [0, 3], Y = [-10, 10]
    solver = B.LVHBA(
        outer_set=B.sets.Box(0.0, 3.0), inner_set=B.sets.Box(-10, 10), affine=affine
    )
    state = solver.init(COUPLED, jnp.zeros(1), jnp.array([5.0]), None, None)
    assert float(state.y[0] - state.x[0]) <= 1e-7
    np.testing.assert_allclose([state.x[0], state.y[0]], [2.5, 2.5], atol=1e-6)
    result = solver.run(COUPLED, jnp.zeros(1), jnp.array([5.0]), num_steps=3000)
    assert bool(jnp.all(jnp.isfinite(result.x)))
    assert float(jnp.abs(result.x[0] - 2)) <= 1e-2


@pytest.mark.parametrize("affine", [False, True])
def test_infeasible_constraints_raise(affine):
    problem = B.BilevelProblem(
        COUPLED.outer,
        COUPLED.inner,
        inner_constraints=lambda x, y: jnp.array([y[0] - x[0] + 1, x[0] - y[0] + 1]),
    )
    with pytest.raises(Exception, match="infeasible"):
        B.LVHBA(affine=affine).run(problem, jnp.zeros(1), jnp.zeros(1), num_steps=10)


def test_affine_needs_affine_sets():
    with pytest.raises(ValueError, match="affine"):
        B.LVHBA(affine=True, inner_set=B.sets.Ball(1.0)).run(
            COUPLED, jnp.zeros(1), jnp.zeros(1), num_steps=1
        )


def test_bad_options():
    with pytest.raises(ValueError, match="power"):
        B.LVHBA(power=0.5)
    with pytest.raises(ValueError, match="alpha"):
        B.LVHBA(alpha=0.0)


def test_sets_project():
    S = B.sets
    v = {"a": jnp.array([2.0, -1.0]), "b": jnp.array([0.5])}
    box = S.Box(0.0, 1.0).project(v)
    np.testing.assert_allclose(box["a"], [1.0, 0.0])
    ball = S.Ball(1.0).project(v)
    norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(ball)))
    assert float(norm) == pytest.approx(1.0)
    simplex = S.Simplex().project(jnp.array([0.9, 0.6, -0.2]))
    np.testing.assert_allclose(simplex, [0.65, 0.35, 0.0], atol=1e-12)
    np.testing.assert_allclose(S.NonNegative().project(jnp.array([-1.0, 2.0])), [0, 2])
    custom = S.Projection(lambda u: jnp.round(u))
    np.testing.assert_allclose(custom.project(jnp.array([0.4])), [0.0])
    with pytest.raises(NotImplementedError, match="projection"):
        custom.constraints(jnp.zeros(1))


def test_kkt_implicit_route_agrees():
    import optax

    # F(x) = ½(x-1)² + ½(min(x, 4)-3)²: dF/dx = 2x - 4 for x < 4
    x = jnp.array([0.5])
    _, grad, y, stats = B.hypergradient(
        COUPLED, x, jnp.zeros(1), B.ConstrainedInner(bx.solvers.AugmentedLagrangian())
    )
    np.testing.assert_allclose(y, [0.5], atol=1e-8)
    np.testing.assert_allclose(grad, [2 * 0.5 - 4], atol=1e-6)
    assert float(stats.inner_residual) <= 1e-8
    solver = B.HypergradientDescent(
        optax.sgd(0.2), inner_solver=B.ConstrainedInner(), warm_start=True
    )
    result = jax.jit(lambda x0, y0: solver.run(COUPLED, x0, y0, num_steps=100))(
        jnp.zeros(1), jnp.zeros(1)
    )
    np.testing.assert_allclose(result.x, [2.0], atol=1e-6)


def test_kkt_route_stops_when_the_lower_level_becomes_infeasible():
    import optax

    # lower level min (θ-4)² s.t. θ <= x, θ >= 1: infeasible for x < 1; the upper
    # level ½x² pulls x below 1
    problem = B.BilevelProblem(
        outer=lambda x, y, b: 0.5 * jnp.sum(x**2),
        inner=lambda x, y, b: jnp.sum((y - 4) ** 2),
        inner_constraints=lambda x, y: jnp.concatenate([y - x, 1 - y]),
    )
    solver = B.HypergradientDescent(optax.sgd(0.3), inner_solver=B.ConstrainedInner())
    result = jax.jit(
        lambda x0, y0: solver.run(problem, x0, y0, num_steps=50, throw=False)
    )(jnp.array([3.0]), jnp.array([1.0]))
    assert result.result == B.RESULTS.inner_failed
    # the run stops at the first x whose lower level is infeasible (3 -> 2.1 ->
    # 1.47 -> 1.029 -> 0.72)
    np.testing.assert_allclose(result.x, [0.7203], atol=1e-6)
    assert 0 < int(result.num_steps) < 50


def test_repr_shows_the_value_function_gap():
    """LV-HBA records the residual it is judged on, the value-function gap, which
    goes to 0 on a successful constrained run (where ‖∇_y g‖ stays at 2), and its
    result's repr names it."""
    problem = B.BilevelProblem(  # y*(x) = min(x, 4); the optimum x = y = 2
        outer=lambda x, y, b: 0.5 * (jnp.sum((x - 1) ** 2) + jnp.sum((y - 3) ** 2)),
        inner=lambda x, y, b: jnp.sum(0.5 * y**2 - 4 * y),
        inner_constraints=lambda x, y: y - x,
    )
    result = B.LVHBA().run(problem, jnp.zeros(1), jnp.zeros(1), num_steps=1000)
    assert result.result == B.RESULTS.successful
    assert abs(float(result.history.inner_residual[-1])) <= 1e-6
    assert float(result.history.inner_residual[0]) > 1e-3  # not solved at first
    assert "value_function_gap=" in repr(result)
    assert "inner_residual" not in repr(result)
