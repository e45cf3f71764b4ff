import jax
import jax.numpy as jnp
import lineax as lx
import pytest

from bilevax.implicit import Neumann, conditions, custom_root

from ._problems import Ridge


def _rel(a, b):
    return float(jnp.linalg.norm(jnp.ravel(a - b)) / jnp.linalg.norm(jnp.ravel(b)))


def _hypergradient_fn(problem, linear_solver):
    @custom_root(conditions.stationarity(problem.inner), linear_solver=linear_solver)
    def solve(init, x):
        return problem.solve(init, x)

    return jax.grad(lambda x: problem.outer(solve(None, x)))


X_SCALAR = jnp.array(0.3)
X_VECTOR = jnp.linspace(-1.0, 1.0, 8)

SOLVERS = {
    "lu": (lx.LU(), 1e-8),
    "cg": (lx.CG(rtol=1e-10, atol=1e-10), 1e-6),
    "gmres": (lx.GMRES(rtol=1e-10, atol=1e-10), 1e-6),
    "bicgstab": (lx.BiCGStab(rtol=1e-10, atol=1e-10), 1e-6),
    "default": (None, 1e-6),
}


@pytest.mark.parametrize("x", [X_SCALAR, X_VECTOR], ids=["scalar", "per-feature"])
@pytest.mark.parametrize("name", list(SOLVERS))
def test_ridge_hypergradient_matches_closed_form(name, x):
    solver, tol = SOLVERS[name]
    problem = Ridge()
    got = _hypergradient_fn(problem, solver)(x)
    want = problem.hypergradient(x)
    assert got.shape == jnp.shape(x)
    assert _rel(got, want) <= tol


@pytest.mark.parametrize("x", [X_SCALAR, X_VECTOR], ids=["scalar", "per-feature"])
def test_neumann_converges_as_steps_grow(x):
    problem = Ridge()
    want = problem.hypergradient(x)
    errors = [
        _rel(_hypergradient_fn(problem, Neumann(steps=s))(x), want)
        for s in [0, 2, 4, 8, 16, 32, 64, 128]
    ]
    # Strictly decreasing until it reaches round-off.
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False) if a > 1e-13), (
        errors
    )
    assert errors[0] > 1e-2  # a real approximation, not the exact answer
    assert errors[-1] < 1e-8


def test_neumann_with_explicit_scale():
    problem = Ridge()
    lam_max = jnp.linalg.eigvalsh(problem.system(X_VECTOR))[-1]
    hg = _hypergradient_fn(problem, Neumann(steps=2000, scale=float(1 / lam_max)))
    assert _rel(hg(X_VECTOR), problem.hypergradient(X_VECTOR)) < 1e-8


def test_jacfwd_equals_jacrev():
    problem = Ridge()

    @custom_root(conditions.stationarity(problem.inner))
    def solve(init, x):
        return problem.solve(init, x)

    fwd = jax.jacfwd(solve, argnums=1)(None, X_VECTOR)
    rev = jax.jacrev(solve, argnums=1)(None, X_VECTOR)
    exact = jax.jacfwd(problem.solve, argnums=1)(None, X_VECTOR)
    assert fwd.shape == (8, 8)
    assert jnp.allclose(fwd, rev, rtol=1e-9, atol=1e-12)
    assert jnp.allclose(fwd, exact, rtol=1e-8, atol=1e-12)


def test_jvp_matches_closed_form_directional_derivative():
    problem = Ridge()

    @custom_root(conditions.stationarity(problem.inner))
    def solve(init, x):
        return problem.solve(init, x)

    t = jnp.arange(8.0) / 8
    _, got = jax.jvp(lambda x: solve(None, x), (X_VECTOR,), (t,))
    _, want = jax.jvp(lambda x: problem.solve(None, x), (X_VECTOR,), (t,))
    assert _rel(got, want) < 1e-8


def test_hessian_matches_finite_differences_of_gradient():
    problem = Ridge()
    grad = _hypergradient_fn(problem, lx.CG(rtol=1e-12, atol=1e-12))

    @custom_root(
        conditions.stationarity(problem.inner),
        linear_solver=lx.CG(rtol=1e-12, atol=1e-12),
    )
    def solve(init, x):
        return problem.solve(init, x)

    hessian = jax.hessian(lambda x: problem.outer(solve(None, x)))(X_VECTOR)
    eps = 1e-5
    fd = jnp.stack(
        [
            (grad(X_VECTOR + eps * e) - grad(X_VECTOR - eps * e)) / (2 * eps)
            for e in jnp.eye(8)
        ],
        axis=1,
    )
    assert hessian.shape == (8, 8)
    assert _rel(hessian, fd) <= 1e-5
    assert jnp.allclose(hessian, hessian.T, rtol=1e-8, atol=1e-10)


def test_vmap_over_hyperparameters_equals_loop_and_jit():
    problem = Ridge()
    hg = _hypergradient_fn(problem, None)
    xs = jnp.linspace(-2.0, 2.0, 8)
    looped = jnp.stack([hg(x) for x in xs])
    vmapped = jax.vmap(hg)(xs)
    jitted = jax.jit(jax.vmap(hg))(xs)
    assert jnp.allclose(vmapped, looped, rtol=1e-10, atol=1e-14)
    assert jnp.allclose(jitted, looped, rtol=1e-10, atol=1e-14)
    want = jax.vmap(problem.hypergradient)(xs)
    assert _rel(jitted, want) < 1e-8


def test_vmap_of_per_feature_hyperparameters():
    problem = Ridge()
    hg = jax.jit(_hypergradient_fn(problem, lx.GMRES(rtol=1e-10, atol=1e-10)))
    xs = jax.random.normal(jax.random.key(3), (8, 8))
    vmapped = jax.vmap(hg)(xs)
    looped = jnp.stack([hg(x) for x in xs])
    assert jnp.allclose(vmapped, looped, rtol=1e-9, atol=1e-12)


def test_gradient_through_closed_over_arrays():
    """Arrays the optimality function closes over are differentiated too."""
    problem = Ridge()

    def outer_of_targets(b):
        inner = lambda w, x: (
            0.5 * jnp.sum((problem.X @ w - b) ** 2) + 0.5 * jnp.exp(x) * jnp.sum(w**2)
        )

        @custom_root(conditions.stationarity(inner))
        def solve(init, x):
            A = problem.X.T @ problem.X + jnp.exp(x) * jnp.eye(problem.d)
            return jnp.linalg.solve(A, problem.X.T @ jax.lax.stop_gradient(b))

        return problem.outer(solve(None, 0.1))

    def exact(b):
        A = problem.X.T @ problem.X + jnp.exp(0.1) * jnp.eye(problem.d)
        return problem.outer(jnp.linalg.solve(A, problem.X.T @ b))

    assert (
        _rel(jax.grad(outer_of_targets)(problem.b), jax.grad(exact)(problem.b)) < 1e-8
    )


def test_pytree_solution_and_parameters():
    """Solutions and parameters may be arbitrary pytrees."""
    problem = Ridge()

    def inner(w, hyper):
        y = jnp.concatenate([w["a"], w["b"]])
        return 0.5 * jnp.sum((problem.X @ y - problem.b) ** 2) + 0.5 * jnp.sum(
            jnp.exp(jnp.concatenate([hyper[0], hyper[1]])) * y**2
        )

    @custom_root(conditions.stationarity(inner))
    def solve(init, hyper):
        y = problem.solve(None, jnp.concatenate([hyper[0], hyper[1]]))
        return {"a": y[:3], "b": y[3:]}

    def outer(hyper):
        w = solve(None, hyper)
        return problem.outer(jnp.concatenate([w["a"], w["b"]]))

    hyper = (X_VECTOR[:3], X_VECTOR[3:])
    got = jax.grad(outer)(hyper)
    want = problem.hypergradient(X_VECTOR)
    assert _rel(jnp.concatenate(got), want) < 1e-8


def test_has_aux_passes_aux_through():
    problem = Ridge()

    @custom_root(conditions.stationarity(problem.inner), has_aux=True)
    def solve(init, x):
        return problem.solve(init, x), {"iterations": jnp.array(3)}

    (w, aux), vjp = jax.vjp(lambda x: solve(None, x), X_VECTOR)
    assert int(aux["iterations"]) == 3
    hg = jax.grad(lambda x: problem.outer(solve(None, x)[0]))(X_VECTOR)
    assert _rel(hg, problem.hypergradient(X_VECTOR)) < 1e-8


def test_keyword_parameters_are_differentiated():
    problem = Ridge()

    @custom_root(conditions.stationarity(lambda w, *, x: problem.inner(w, x)))
    def solve(init, *, x):
        return problem.solve(init, x)

    hg = jax.grad(lambda x: problem.outer(solve(None, x=x)))(X_VECTOR)
    assert _rel(hg, problem.hypergradient(X_VECTOR)) < 1e-8


def test_init_does_not_receive_gradient_and_solver_internals_are_not_traced():
    """Only the optimality condition is differentiated: a solver that is itself
    not differentiable (a while loop on the iterate) still gets exact gradients,
    and the initial guess has zero gradient."""
    problem = Ridge()
    inner_grad = jax.grad(problem.inner)

    @custom_root(conditions.stationarity(problem.inner))
    def gradient_descent(init, x):
        step = 1.0 / jnp.linalg.eigvalsh(problem.system(x))[-1]

        def cond(state):
            w, k = state
            return (jnp.linalg.norm(inner_grad(w, x)) > 1e-12) & (k < 100_000)

        def body(state):
            w, k = state
            return w - step * inner_grad(w, x), k + 1

        return jax.lax.while_loop(cond, body, (init, 0))[0]

    def outer(x, init):
        return problem.outer(gradient_descent(init, x))

    g_x, g_init = jax.grad(outer, argnums=(0, 1))(X_VECTOR, jnp.zeros(8))
    assert _rel(g_x, problem.hypergradient(X_VECTOR)) < 1e-8
    assert jnp.all(g_init == 0)


def test_grad_of_vmap_with_a_shared_pytree_parameter():
    def objective(y, theta, a):
        return (
            0.5 * jnp.sum((y["u"] * a - 1) ** 2)
            + 0.5 * jnp.sum((y["v"] - theta["v"]) ** 2)
            + 0.5 * jnp.sum((y["u"] - theta["u"]) ** 2)
        )

    @custom_root(conditions.stationarity(objective))
    def solve(init, theta, a):
        return init

    loss = lambda theta, a: jnp.sum(solve(theta, theta, a)["u"] ** 2)
    theta = {"u": jnp.arange(3.0), "v": jnp.ones(2)}
    A = jnp.linspace(0.5, 2.0, 12).reshape(4, 3)
    got = jax.grad(lambda t: jax.vmap(loss, in_axes=(None, 0))(t, A).sum())(theta)
    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(theta, A)
    # `solve` returns y = θ (not the minimiser): the implicit derivative there is
    # ∂u/∂θu = 1/(a² + 1) (from ∂F_u/∂u = a² + 1, ∂F_u/∂θu = -1), and u does not
    # depend on θv
    want = {"u": jnp.sum(2 * theta["u"] / (A**2 + 1), 0), "v": jnp.zeros(2)}
    for k in theta:
        assert jnp.allclose(got[k], want[k], rtol=1e-8, atol=1e-12)
        assert jnp.allclose(per_example[k].sum(0), want[k], rtol=1e-8, atol=1e-12)


_WRONG_OUTPUTS = {
    "shape": lambda init, a: jnp.zeros(3),
    "structure": lambda init, a: (init, init),
    "dtype": lambda init, a: init.astype(jnp.float32),
}


@pytest.mark.parametrize("kind", sorted(_WRONG_OUTPUTS))
@pytest.mark.parametrize("decorator", ["custom_root", "custom_fixed_point"])
def test_solver_of_the_wrong_structure_is_named(kind, decorator):
    from bilevax.implicit import custom_fixed_point

    if decorator == "custom_root":
        wrap = custom_root(lambda y, a: y - a)
    else:
        wrap = custom_fixed_point(lambda y, a: 0.5 * y + a)
    solve = wrap(_WRONG_OUTPUTS[kind])
    with pytest.raises(ValueError, match=r"(?s)`solver`.*expected \(init\).*actual"):
        solve(jnp.zeros(2), jnp.ones(2))
    with pytest.raises(ValueError, match="`solver`"):
        jax.grad(lambda a: jnp.sum(solve(jnp.zeros(2), a)))(jnp.ones(2))


def test_solver_output_the_condition_cannot_take_is_named():
    """No array `init` to compare with: the condition's failure on the returned
    solution names the solver and what it returned."""
    solve = custom_root(lambda y, a: y - a)(lambda init, a: jnp.zeros(3))
    with pytest.raises(ValueError, match=r"(?s)`solver`.*float\d+\[3\]"):
        solve(None, jnp.ones(2))


def test_second_order_when_the_loss_skips_a_block_of_the_solution():
    """Hessians through `custom_root` whose solution is a pair `(y, z)` and whose
    loss reads `y` only: under second order the cotangent of `z` is a symbolic zero
    in the adjoint solve's right-hand side, which once crashed JAX's JVP rule of
    `custom_linear_solve` (`jax.hessian` through KKT-type conditions)."""
    with jax.enable_x64(True):
        # F(y, z; θ) = (y - θ², z - 2y): y = θ², z = 2θ²
        condition = lambda sol, theta: (sol[0] - theta**2, sol[1] - 2 * sol[0])
        solve = custom_root(condition)(lambda init, t: (t**2, 2 * t**2))
        theta = jnp.array([1.5, -0.5])
        loss = lambda t: jnp.sum(jnp.sin(solve(None, t)[0]))  # Σ sin θ²
        expected = jnp.diag(2 * jnp.cos(theta**2) - 4 * theta**2 * jnp.sin(theta**2))
        assert jnp.allclose(jax.hessian(loss)(theta), expected, atol=1e-10)
        # the loss reads z only (the cotangent of y is the zero one): d²/dθ² Σ (2θ²)²
        # = 48 θ²
        loss_z = lambda t: jnp.sum(solve(None, t)[1] ** 2)
        assert jnp.allclose(jax.hessian(loss_z)(theta), jnp.diag(48 * theta**2))
