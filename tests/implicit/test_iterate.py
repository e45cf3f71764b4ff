import jax
import jax.numpy as jnp
import optax
import pytest

from bilevax.implicit import (
    ImplicitAdjoint,
    TruncatedAdjoint,
    UnrolledAdjoint,
    conditions,
    iterate,
    optax_step,
)

from ._problems import Ridge


def _rel(a, b):
    a, b = jnp.ravel(jnp.asarray(a)), jnp.ravel(jnp.asarray(b))
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


X = jnp.linspace(-1.0, 1.0, 8)
PROBLEM = Ridge()
STEPSIZE = float(1.0 / jnp.linalg.eigvalsh(PROBLEM.system(X + 1.0))[-1])


def _gd(w, x, t):
    return w - STEPSIZE * jax.grad(PROBLEM.inner)(w, x)


def _plain_loop(x, num_steps, step=_gd, y0=None):
    y0 = jnp.zeros(8) if y0 is None else y0
    return jax.lax.fori_loop(0, num_steps, lambda t, w: step(w, x, t), y0)


def _outer_through(adjoint, num_steps=200, step=_gd):
    return lambda x: PROBLEM.outer(
        iterate(step, jnp.zeros(8), x, num_steps, adjoint=adjoint)
    )


@pytest.mark.parametrize(
    "adjoint",
    [UnrolledAdjoint(), UnrolledAdjoint(checkpoints=7), UnrolledAdjoint("all")],
    ids=["default-checkpoints", "7-checkpoints", "all"],
)
def test_unrolled_equals_plain_jax_gradient(adjoint):
    want = jax.grad(lambda x: PROBLEM.outer(_plain_loop(x, 200)))(X)
    got = jax.jit(jax.grad(_outer_through(adjoint)))(X)
    assert _rel(got, want) <= 1e-10


def test_unrolled_adam_equals_plain_jax_gradient():
    optimizer = optax.adam(0.05)
    step = optax_step(PROBLEM.inner, optimizer)

    def plain(x):
        def body(t, state):
            params, opt_state = state
            grads = jax.grad(PROBLEM.inner)(params, x)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        state = (jnp.zeros(8), optimizer.init(jnp.zeros(8)))
        return PROBLEM.outer(jax.lax.fori_loop(0, 200, body, state)[0])

    def ours(x):
        state = (jnp.zeros(8), optimizer.init(jnp.zeros(8)))
        params, _ = iterate(step, state, x, 200, adjoint=UnrolledAdjoint())
        return PROBLEM.outer(params)

    want = jax.grad(plain)(X)
    assert jnp.linalg.norm(want) > 1e-3
    assert _rel(jax.jit(jax.grad(ours))(X), want) <= 1e-10


def test_truncated_with_K_equal_T_is_unrolled():
    full = jax.grad(_outer_through(UnrolledAdjoint()))(X)
    for K in [200, 500]:
        assert _rel(jax.grad(_outer_through(TruncatedAdjoint(K)))(X), full) <= 1e-12


def test_truncated_bias_obeys_the_geometric_bound():
    r"""Strongly convex quadratic inner problem g(w, x) = ½wᵀHw - wᵀBx, GD step
    γ = 1/β: ‖h_K - h*‖ <= (1-γα)^K ‖∇_w f(w_T)‖ ‖B‖/α (+ the unrolling error)."""
    key1, key2, key3 = jax.random.split(jax.random.key(7), 3)
    n, m = 10, 4
    Q, _ = jnp.linalg.qr(jax.random.normal(key1, (n, n)))
    eigs = jnp.geomspace(0.2, 2.0, n)
    H = Q @ jnp.diag(eigs) @ Q.T
    B = jax.random.normal(key2, (n, m))
    c = jax.random.normal(key3, (n,))
    alpha, beta = float(eigs[0]), float(eigs[-1])
    gamma = 1.0 / beta
    g = lambda w, x: 0.5 * w @ H @ w - w @ (B @ x)
    f = lambda w: 0.5 * jnp.sum((w - c) ** 2)
    step = lambda w, x, t: w - gamma * jax.grad(g)(w, x)
    x = jnp.ones(m)
    T = 400  # long enough that w_T is the solution to round-off
    w_star = jnp.linalg.solve(H, B @ x)
    exact = B.T @ jnp.linalg.solve(H, w_star - c)  # implicit hypergradient
    w_T = iterate(step, jnp.zeros(n), x, T)
    constant = float(jnp.linalg.norm(jax.grad(f)(w_T)) * jnp.linalg.norm(B, 2) / alpha)
    errors, bounds = [], []
    for K in [0, 2, 5, 10, 20, 40, 80]:
        adjoint = TruncatedAdjoint(K)
        h_K = jax.grad(
            lambda x, adjoint=adjoint: f(
                iterate(step, jnp.zeros(n), x, T, adjoint=adjoint)
            )
        )(x)
        errors.append(float(jnp.linalg.norm(h_K - exact)))
        bounds.append((1 - gamma * alpha) ** K * constant)
    assert all(e <= b * (1 + 1e-9) + 1e-12 for e, b in zip(errors, bounds, strict=True))
    assert errors[0] > 0.1 * bounds[0]  # the bound is not vacuous here
    # Geometric decay at the rate of the bound, not just monotone.
    assert errors[-1] < 1e-3 * errors[0]
    assert errors[-1] <= errors[0] * (1 - gamma * alpha) ** 80 * 10


def test_unrolled_converges_to_implicit_as_T_grows():
    exact = PROBLEM.hypergradient(X)
    errors = [
        _rel(jax.grad(_outer_through(UnrolledAdjoint(), T))(X), exact)
        for T in [5, 10, 20, 40, 80, 160, 640]
    ]
    # Strictly decreasing until round-off.
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False) if a > 1e-13), (
        errors
    )
    assert errors[0] > 1e-2
    assert errors[-1] < 1e-8


def test_implicit_adjoint_matches_closed_form():
    exact = PROBLEM.hypergradient(X)
    for adjoint in [
        ImplicitAdjoint(),
        ImplicitAdjoint(condition=conditions.stationarity(PROBLEM.inner)),
    ]:
        got = jax.jit(jax.grad(_outer_through(adjoint, 3000)))(X)
        assert _rel(got, exact) < 1e-8


@pytest.mark.parametrize(
    "adjoint",
    [UnrolledAdjoint(), TruncatedAdjoint(50), ImplicitAdjoint()],
    ids=["unrolled", "truncated", "implicit"],
)
def test_adjoints_vmap_over_hyperparameters_and_pytree_states(adjoint):
    def step(state, x, t):
        w = jnp.concatenate([state["a"], state["b"]])
        w = _gd(w, x, t)
        return {"a": w[:3], "b": w[3:]}

    def outer(x):
        state = iterate(
            step, {"a": jnp.zeros(3), "b": jnp.zeros(5)}, x, 300, adjoint=adjoint
        )
        return PROBLEM.outer(jnp.concatenate([state["a"], state["b"]]))

    xs = jnp.stack([X, X + 0.5, X - 0.5])
    vmapped = jax.jit(jax.vmap(jax.grad(outer)))(xs)
    looped = jnp.stack([jax.grad(outer)(x) for x in xs])
    assert jnp.allclose(vmapped, looped, rtol=1e-9, atol=1e-12)
    assert vmapped.shape == (3, 8)


def test_batches_key_and_records():
    data = jax.random.normal(jax.random.key(0), (20, 8))

    def step(w, x, t, batch, key):
        noise = 0.01 * jax.random.normal(key, w.shape)
        return w - 0.1 * (w - batch * jnp.exp(x)) + noise

    key = jax.random.key(3)
    y, losses = iterate(
        step,
        jnp.zeros(8),
        X,
        20,
        batches=data,
        key=key,
        record=lambda w, x, t: jnp.sum(w**2) + t,
    )
    keys = jax.random.split(key, 20)
    w = jnp.zeros(8)
    expected = []
    for t in range(20):
        w = step(w, X, t, data[t], keys[t])
        expected.append(jnp.sum(w**2) + t)
    assert jnp.allclose(y, w, rtol=1e-12)
    assert jnp.allclose(losses, jnp.stack(expected), rtol=1e-12)
    # Gradients flow through batched steps too.
    grad = jax.grad(
        lambda x: iterate(step, jnp.zeros(8), x, 20, batches=data, key=key).sum()
    )(X)
    assert jnp.all(jnp.isfinite(grad))


def test_warm_and_cold_start_give_different_hypergradients():
    """Underdetermined least squares min_w ½‖Aw - x‖² (A is 3×8) has a whole affine
    space of solutions; gradient descent from y0 ends at the one nearest y0:
    w∞ = (I - A⁺A) y0 + A⁺x. The hypergradient of f(w) = ½(w - c)ᵀD(w - c) is
    A⁺ᵀD(w∞ - c), so with a non-isotropic D it depends on the start."""
    A = jax.random.normal(jax.random.key(0), (3, 8))
    c = jnp.arange(8.0)
    x = jnp.array([1.0, -1.0, 2.0])
    gamma = 1.0 / jnp.linalg.eigvalsh(A @ A.T)[-1]
    step = lambda w, x, t: w - gamma * A.T @ (A @ w - x)
    D = jnp.arange(1.0, 9.0)
    f = lambda w: 0.5 * jnp.sum(D * (w - c) ** 2)
    pinv = jnp.linalg.pinv(A)

    def hypergradient(y0):
        return jax.grad(lambda x: f(iterate(step, y0, x, 2000)))(x)

    def closed_form(y0):
        w_inf = (jnp.eye(8) - pinv @ A) @ y0 + pinv @ x
        return pinv.T @ (D * (w_inf - c))

    cold = jnp.zeros(8)
    warm = jax.lax.stop_gradient(jnp.linspace(-2.0, 2.0, 8))  # a previous solution
    assert jnp.allclose(hypergradient(cold), closed_form(cold), rtol=1e-8)
    assert jnp.allclose(hypergradient(warm), closed_form(warm), rtol=1e-8)
    assert _rel(hypergradient(cold), hypergradient(warm)) > 0.05


def test_cotangent_clipping():
    full = jax.grad(_outer_through(UnrolledAdjoint()))(X)
    loose = jax.grad(_outer_through(UnrolledAdjoint(max_cotangent_norm=1e6)))(X)
    assert _rel(loose, full) < 1e-12
    tight = jax.grad(_outer_through(UnrolledAdjoint(max_cotangent_norm=1e-3)))(X)
    assert jnp.linalg.norm(tight) < 0.1 * jnp.linalg.norm(full)


def test_bad_inputs():
    with pytest.raises(
        ValueError, match=r"(?s)structure, shapes and dtypes.*float64\[3\]"
    ):
        iterate(lambda w, x, t: w[:3], jnp.zeros(8), X, 5)
    with pytest.raises(TypeError, match="Python int"):
        iterate(_gd, jnp.zeros(8), X, jnp.array(5))
    with pytest.raises(ValueError, match=">= 0"):
        iterate(_gd, jnp.zeros(8), X, -1)
    with pytest.raises(ValueError, match="leading axis"):
        iterate(lambda w, x, t, b: w, jnp.zeros(8), X, 5, batches=jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="adjoint"):
        iterate(_gd, jnp.zeros(8), X, 5, adjoint="unrolled")
    with pytest.raises(ValueError, match="K"):
        TruncatedAdjoint(-1)
    optimizer = optax.adam(0.1)
    with pytest.raises(TypeError, match="floating point"):
        state = (jnp.zeros(8), optimizer.init(jnp.zeros(8)))
        iterate(
            optax_step(PROBLEM.inner, optimizer), state, X, 5, adjoint=ImplicitAdjoint()
        )


# ---------------------------------------------------------------------------------
# Every input keeps its derivative where an adjoint claims exactness (issue 18.2).
# ---------------------------------------------------------------------------------


def test_truncated_K_at_least_T_differentiates_the_initial_state():
    step = lambda y, a, t: y - a * (y - 2.0)
    for K in [10, 25]:
        final = lambda y0, K=K: iterate(step, y0, 0.1, 10, adjoint=TruncatedAdjoint(K))
        assert jnp.allclose(jax.grad(final)(0.0), 0.9**10, rtol=1e-12)
    # K < T: y_{T-K} is a constant, so d/dy0 is zero (documented).
    short = lambda y0: iterate(step, y0, 0.1, 10, adjoint=TruncatedAdjoint(3))
    assert jax.grad(short)(0.0) == 0.0


def _maml_step(w, theta, t, batch):
    """One SGD step on a least-squares task, pulled towards the meta-parameters."""
    inputs, targets = batch
    loss = lambda w: 0.5 * jnp.mean((inputs @ w - targets) ** 2)
    return w - 0.3 * jax.grad(loss)(w) - 0.1 * (w - theta)


def _maml_data(num_steps=6):
    k1, k2 = jax.random.split(jax.random.key(11))
    return jax.random.normal(k1, (num_steps, 5, 3)), jax.random.normal(
        k2, (num_steps, 5)
    )


@pytest.mark.parametrize("K", [6, 9])
def test_truncated_K_at_least_T_equals_unrolled_for_every_input(K):
    """MAML-style use: θ is both the initial state and the step's parameter, and the
    batches are differentiated too; the derivatives are checked against finite
    differences of the plain loop."""
    batches = _maml_data()

    def outer(theta, batches, adjoint):
        w = iterate(_maml_step, theta, theta, 6, adjoint=adjoint, batches=batches)
        return jnp.sum(jnp.sin(w))

    theta = jnp.array([0.3, -0.2, 0.5])
    want = jax.grad(outer, argnums=(0, 1))(theta, batches, UnrolledAdjoint("all"))
    got = jax.grad(outer, argnums=(0, 1))(theta, batches, TruncatedAdjoint(K))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert _rel(a, b) < 1e-12
    e = jnp.array([1.0, 0.0, 0.0]) * 1e-6
    fd = (
        outer(theta + e, batches, UnrolledAdjoint())
        - outer(theta - e, batches, UnrolledAdjoint())
    ) / 2e-6
    assert jnp.allclose(got[0][0], fd, rtol=1e-7)


def test_truncated_pytree_state_derivative_in_y0_and_x():
    def step(state, x, t):
        return {
            "u": state["u"] - 0.2 * (state["u"] - x * state["v"]),
            "v": 0.9 * state["v"],
        }

    y0 = {"u": jnp.array([1.0, -2.0]), "v": jnp.array([0.5, 0.25])}

    def outer(y0, x, adjoint):
        out = iterate(step, y0, x, 7, adjoint=adjoint)
        return jnp.sum(out["u"] ** 2) + jnp.sum(out["v"])

    for argnum in (0, 1):
        want = jax.grad(outer, argnum)(y0, 1.5, UnrolledAdjoint())
        got = jax.grad(outer, argnum)(y0, 1.5, TruncatedAdjoint(7))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert jnp.allclose(a, b, rtol=1e-12)
    # K < T: zero for every leaf of y0, a truncated (different) derivative in x.
    zero = jax.grad(outer)(y0, 1.5, TruncatedAdjoint(3))
    assert all(jnp.all(leaf == 0) for leaf in jax.tree.leaves(zero))


def test_implicit_adjoint_derivative_in_y0_is_the_limit_of_unrolled():
    """The fixed point does not depend on y0: the unrolled derivative in y0 decays
    like 0.9^T and the implicit one is its limit, zero."""
    step = lambda y, a, t: y - a * (y - 2.0)
    implicit = lambda y0: iterate(step, y0, 0.1, 400, adjoint=ImplicitAdjoint())
    unrolled = lambda y0: iterate(step, y0, 0.1, 400, adjoint=UnrolledAdjoint())
    assert jax.grad(implicit)(0.0) == 0.0
    assert abs(jax.grad(unrolled)(0.0)) < 1e-15


@pytest.mark.parametrize(
    "step",
    [
        lambda y, x, t: jnp.zeros(3),
        lambda y, x, t: (y, y),
        lambda y, x, t: (0.5 * y + x).astype(jnp.float32),
    ],
    ids=["shape", "structure", "dtype"],
)
def test_step_of_the_wrong_structure_is_named(step):
    from bilevax.implicit import ImplicitAdjoint, UnrolledAdjoint, iterate

    for adjoint in (ImplicitAdjoint(), UnrolledAdjoint()):
        with pytest.raises(ValueError, match=r"(?s)`step`.*y0:.*step\(y0, ...\)"):
            iterate(step, jnp.zeros(2), jnp.ones(2), 5, adjoint=adjoint)


def test_forward_mode_support_by_adjoint():
    """Forward mode works with the implicit adjoint and with a plain (all states
    stored) unrolled loop; through a checkpointed one it is a clear error naming
    the adjoint and the remedies."""
    from bilevax.implicit import (
        ImplicitAdjoint,
        TruncatedAdjoint,
        UnrolledAdjoint,
        iterate,
    )

    step = lambda y, x, t: 0.5 * y + x  # y_T → 2x
    x, v = jnp.ones(2), jnp.array([1.0, -1.0])

    def final(adjoint):
        return lambda x_: iterate(step, jnp.zeros(2), x_, 60, adjoint=adjoint)

    for adjoint in (
        ImplicitAdjoint(),
        UnrolledAdjoint(checkpoints="all"),
        TruncatedAdjoint(60, checkpoints="all"),
    ):
        _, tangent = jax.jvp(final(adjoint), (x,), (v,))
        assert jnp.allclose(tangent, 2 * v, atol=1e-8), adjoint
    for adjoint in (UnrolledAdjoint(), TruncatedAdjoint(5)):
        with pytest.raises(TypeError, match=type(adjoint).__name__ + ".*reverse mode"):
            jax.jacfwd(final(adjoint))(x)


def test_second_order_through_the_checkpointed_loop():
    """Forward over reverse works through the checkpointed loop; reverse over
    reverse needs `checkpoints="all"` (documented on `UnrolledAdjoint`)."""
    with jax.enable_x64(True):
        step = lambda y, lam, t: y - 0.1 * (y - 1.0 + lam * y * y)

        def f(lam, adjoint):
            return iterate(step, jnp.zeros(2), lam, 50, adjoint=adjoint).sum()

        everything = lambda lam: f(lam, UnrolledAdjoint(checkpoints="all"))
        reference = jax.grad(jax.grad(everything))(0.7)
        checkpointed = lambda lam: f(lam, UnrolledAdjoint())
        assert jnp.allclose(jax.hessian(checkpointed)(0.7), reference, rtol=1e-10)
        assert jnp.allclose(jax.jacfwd(jax.grad(checkpointed))(0.7), reference)
        h = 1e-5
        fd = (jax.grad(everything)(0.7 + h) - jax.grad(everything)(0.7 - h)) / (2 * h)
        assert jnp.allclose(reference, fd, rtol=1e-6)
