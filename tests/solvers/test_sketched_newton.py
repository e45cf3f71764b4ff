"""`SketchedNewton` through `minimize`: Hock-Schittkowski problems with known
solutions, derivatives through the KKT conditions (finite differences, jaxopt's
`EqualityConstrainedQP`), vmap over a batch of problems, and bad input."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import bilevax as bx

S = bx.solvers


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# name: (objective, equality constraints, standard start, optimal value)
HOCK_SCHITTKOWSKI = {
    "HS6": (
        lambda y, a: (1 - y[0]) ** 2,
        lambda y, a: jnp.array([10 * (y[1] - y[0] ** 2)]),
        [-1.2, 1.0],
        0.0,
    ),
    "HS7": (
        lambda y, a: jnp.log(1 + y[0] ** 2) - y[1],
        lambda y, a: jnp.array([(1 + y[0] ** 2) ** 2 + y[1] ** 2 - 4]),
        [2.0, 2.0],
        -(3.0**0.5),
    ),
    "HS28": (
        lambda y, a: (y[0] + y[1]) ** 2 + (y[1] + y[2]) ** 2,
        lambda y, a: jnp.array([y[0] + 2 * y[1] + 3 * y[2] - 1]),
        [-4.0, 1.0, 1.0],
        0.0,
    ),
    "HS48": (
        lambda y, a: (y[0] - 1) ** 2 + (y[1] - y[2]) ** 2 + (y[3] - y[4]) ** 2,
        lambda y, a: jnp.array([jnp.sum(y) - 5, y[2] - 2 * (y[3] + y[4]) + 3]),
        [3.0, 5.0, -3.0, 2.0, -2.0],
        0.0,
    ),
}


@pytest.mark.parametrize("linear_solver", ["kaczmarz", "gaussian"])
@pytest.mark.parametrize("name", sorted(HOCK_SCHITTKOWSKI))
def test_hock_schittkowski(name, linear_solver):
    f, c, y0, value = HOCK_SCHITTKOWSKI[name]
    sketch = {
        "kaczmarz": S.RandomizedKaczmarz(max_steps=100_000),
        "gaussian": S.GaussianSketch(max_steps=100_000),
    }[linear_solver]
    solver = S.SketchedNewton(linear_solver=sketch)
    sol = jax.jit(
        lambda y0: S.minimize(S.ConstrainedProblem(f, eq=c), y0, None, solver)
    )(jnp.asarray(y0))
    assert sol.result == S.RESULTS.successful
    assert float(sol.stats["kkt_residual"]) <= 1e-4
    assert float(f(sol.y, None)) == pytest.approx(value, abs=1e-6)
    assert jnp.linalg.norm(c(sol.y, None)) <= 1e-4


def _nlp():
    f = lambda y, th: 0.5 * jnp.sum((y - th[:3]) ** 2) + 0.1 * y[0] ** 4
    c = lambda y, th: jnp.array([jnp.sum(y) - th[3], y[0] ** 2 + y[1] - th[4]])
    return S.ConstrainedProblem(f, eq=c)


def test_nlp_derivatives_match_finite_differences():
    problem = _nlp()
    solver = S.SketchedNewton(tol=1e-11)
    theta = jnp.array([0.3, -0.2, 0.5, 1.0, 0.7])
    y0 = jnp.zeros(3)
    solution = jax.jit(lambda th: S.minimize(problem, y0, th, solver).y)
    jac = jax.jacrev(solution)(theta)
    jac_fwd = jax.jacfwd(solution)(theta)
    h = 1e-5
    eye = jnp.eye(5)
    fd = jnp.stack(
        [(solution(theta + h * e) - solution(theta - h * e)) / (2 * h) for e in eye],
        axis=1,
    )
    assert jnp.allclose(jac, fd, rtol=1e-5, atol=1e-8)
    assert jnp.allclose(jac_fwd, jac, rtol=1e-10, atol=1e-12)


def test_qp_derivatives_match_jaxopt():
    jaxopt = pytest.importorskip("jaxopt")
    k1, k2 = jax.random.split(jax.random.key(0))
    M = jax.random.normal(k1, (6, 6))
    Q = M @ M.T + jnp.eye(6)
    A = jax.random.normal(k2, (2, 6))
    problem = S.ConstrainedProblem(
        lambda y, p: 0.5 * y @ Q @ y + p[0] @ y, eq=lambda y, p: A @ y - p[1]
    )

    def ours(q, b):
        return S.minimize(problem, jnp.zeros(6), (q, b), S.SketchedNewton(tol=1e-10)).y

    def reference(q, b):
        qp = jaxopt.EqualityConstrainedQP()
        return qp.run(params_obj=(Q, q), params_eq=(A, b)).params.primal

    q, b = jnp.arange(6.0) / 6, jnp.array([1.0, -1.0])
    assert jnp.allclose(ours(q, b), reference(q, b), atol=1e-8)
    loss = lambda fn: lambda q, b: jnp.sum(jnp.sin(fn(q, b)))
    ours_grad = jax.grad(loss(ours), argnums=(0, 1))(q, b)
    ref_grad = jax.grad(loss(reference), argnums=(0, 1))(q, b)
    for a, r in zip(ours_grad, ref_grad, strict=True):
        assert jnp.allclose(a, r, rtol=1e-6, atol=1e-9)


def test_vmap_over_a_batch_of_problems():
    problem = _nlp()
    thetas = jnp.array([[0.3, -0.2, 0.5, 1.0, 0.7], [0.1, 0.2, 0.3, 0.5, 0.4]])
    run = lambda th: S.minimize(problem, jnp.zeros(3), th, S.SketchedNewton(tol=1e-10))
    batched = jax.jit(jax.vmap(run))(thetas)
    for i in range(2):
        single = run(thetas[i])
        assert jnp.allclose(batched.y[i], single.y, atol=1e-8)
    assert bool(jnp.all(batched.result == S.RESULTS.successful))


@pytest.mark.parametrize("direct", [False, True])
def test_redundant_constraints_are_solved_inconsistent_ones_singular(direct):
    solver = S.SketchedNewton(linear_solver=lx.LU()) if direct else S.SketchedNewton()
    f = lambda y, a: jnp.sum((y - a) ** 2)
    redundant = S.ConstrainedProblem(
        f, eq=lambda y, a: jnp.array([y[0] + y[1] - 1, 2 * y[0] + 2 * y[1] - 2])
    )
    solve = lambda a: S.minimize(redundant, jnp.zeros(2), a, solver).y
    a = jnp.array([1.0, 2.0])
    np.testing.assert_allclose(solve(a), [0.0, 1.0], atol=1e-6)
    projector = jnp.array([[0.5, -0.5], [-0.5, 0.5]])
    np.testing.assert_allclose(jax.jacobian(solve)(a), projector, atol=1e-8)
    inconsistent = S.ConstrainedProblem(
        f, eq=lambda y, a: jnp.array([y[0] + y[1] - 1, y[0] + y[1] - 2])
    )
    sol = S.minimize(inconsistent, jnp.zeros(2), a, solver, throw=False)
    assert sol.result == S.RESULTS.singular
    with pytest.raises(Exception, match="RESULTS.singular"):
        jax.block_until_ready(S.minimize(inconsistent, jnp.zeros(2), a, solver).y)


_ROBUST = {  # name: (constraints, status); start y = 0, objective ‖y - (0.5, 0.3)‖²
    # G = 0 at the start, full rank at the solution
    "circle": (lambda y: jnp.array([y[0] ** 2 + y[1] ** 2 - 1]), "successful"),
    # redundant and consistent (nonlinear, scaled copies)
    "redundant": (
        lambda y: jnp.array([y[0] ** 2 + y[1] - 1, -2 * (y[0] ** 2 + y[1] - 1)]),
        "successful",
    ),
    # inconsistent: no feasible point
    "two_values": (lambda y: jnp.array([y[0] - 1, y[0] - 2]), "singular"),
    "square_plus_one": (lambda y: jnp.array([y[0] ** 2 + 1]), "singular"),
}


@pytest.mark.parametrize("name", sorted(_ROBUST))
def test_rank_deficient_jacobians_solved_inconsistent_ones_fail_fast(name):
    """A rank-deficient `G` (at the start, or everywhere for redundant rows) does
    not stop the method; inconsistent constraints end with a failure status
    within a few iterations, not at `max_steps`."""
    eq, status = _ROBUST[name]
    problem = S.ConstrainedProblem(
        lambda y, a: jnp.sum((y - a) ** 2), eq=lambda y, a: eq(y)
    )
    solver = S.SketchedNewton(linear_solver=lx.LU(), tol=1e-8)
    sol = S.minimize(problem, jnp.zeros(2), jnp.array([0.5, 0.3]), solver, throw=False)
    assert sol.result == getattr(S.RESULTS, status)
    assert int(sol.stats["num_steps"]) <= 50
    if status == "successful":
        np.testing.assert_allclose(eq(sol.y), 0.0, atol=1e-8)
        # stationary: ∇f = -Gᵀλ for some λ (least squares), the KKT residual small
        G = jax.jacfwd(eq)(sol.y)
        g = 2 * (sol.y - jnp.array([0.5, 0.3]))
        lam = jnp.linalg.lstsq(G.T, -g)[0]
        np.testing.assert_allclose(g + G.T @ lam, 0.0, atol=1e-7)


def test_nan_is_reported():
    problem = S.ConstrainedProblem(
        lambda y, a: jnp.sum(jnp.sqrt(y)), eq=lambda y, a: jnp.array([y[0] + y[1] + 1])
    )
    sol = S.minimize(problem, jnp.array([-1.0, 0.0]), None, throw=False)
    assert sol.result != S.RESULTS.successful


def test_bad_input():
    f = lambda y, a: jnp.sum(y**2)
    c = lambda y, a: jnp.array([y[0] - 1.0])
    with pytest.raises(ValueError, match="inequalit"):
        S.minimize(S.ConstrainedProblem(f, eq=c, ineq=c), jnp.zeros(2))
    with pytest.raises(ValueError, match="1-D array"):
        S.minimize(S.ConstrainedProblem(f, eq=lambda y, a: y[0]), jnp.zeros(2))
    with pytest.raises(ValueError, match="scalar"):
        S.minimize(S.ConstrainedProblem(lambda y, a: y, eq=c), jnp.zeros(2))
    with pytest.raises(TypeError, match="float"):
        S.minimize(S.ConstrainedProblem(f, eq=c), jnp.zeros(2, int))
