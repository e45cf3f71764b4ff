"""The adjoint linear solve of `custom_root`: batching with shared parameters
(`grad` of `vmap`), and failed solves reported as failures (issue 18, items 1, 3)."""

import jax
import jax.numpy as jnp
import lineax as lx
import pytest

import bilevax as bx
from bilevax.implicit import (
    CG,
    Neumann,
    conditions,
    custom_fixed_point,
    custom_root,
    root_jvp,
    root_vjp,
)

A_BATCH = jnp.array([1.0, 2.0, 4.0])


def _close(a, b, tol=1e-9):
    return jax.tree.all(
        jax.tree.map(lambda u, v: bool(jnp.allclose(u, v, rtol=tol, atol=tol)), a, b)
    )


# ------------------------------------------------------------------- grad of vmap


@custom_root(lambda y, p, a: a * y - p)
def _scalar_root(init, p, a):
    return p / a


def _scalar_loss(p, a):
    return _scalar_root(jnp.zeros(()), p, a) ** 2


def test_grad_of_vmap_with_a_shared_scalar():
    total = lambda p: jnp.sum(jax.vmap(_scalar_loss, (None, 0))(p, A_BATCH))
    p = jnp.array(3.0)
    # Σ (p/a)²: d/dp = 2 p Σ 1/a² = 7.875, d²/dp² = 2 Σ 1/a² = 2.625
    assert float(jax.grad(total)(p)) == pytest.approx(7.875, rel=1e-12)
    assert float(jax.jit(jax.grad(total))(p)) == pytest.approx(7.875, rel=1e-12)
    assert float(jax.jacfwd(total)(p)) == pytest.approx(7.875, rel=1e-12)
    assert float(jax.hessian(total)(p)) == pytest.approx(2.625, rel=1e-12)
    per_task = jax.vmap(jax.grad(_scalar_loss), (None, 0))(p, A_BATCH)
    assert float(jnp.sum(per_task)) == pytest.approx(7.875, rel=1e-12)
    # and with respect to the batched argument: d/da (p/a)² = -2 p² / a³
    got = jax.grad(lambda a: jnp.sum(jax.vmap(_scalar_loss, (None, 0))(p, a)))(A_BATCH)
    assert _close(got, -2 * 9.0 / A_BATCH**3)


def test_grad_of_vmap_custom_fixed_point_with_a_shared_scalar():
    @custom_fixed_point(lambda y, p, a: y - 0.1 * (a * y - p))
    def solve(init, p, a):
        return p / a

    total = lambda p: jnp.sum(
        jax.vmap(lambda a: solve(jnp.zeros(()), p, a) ** 2)(A_BATCH)
    )
    assert float(jax.grad(total)(jnp.array(3.0))) == pytest.approx(7.875, rel=1e-8)
    assert float(jax.hessian(total)(jnp.array(3.0))) == pytest.approx(2.625, rel=1e-8)


def _pytree_objective(y, theta, a):
    return (
        0.5 * jnp.sum((y["u"] * a - 1) ** 2)
        + 0.5 * jnp.sum((y["v"] - theta["v"]) ** 2)
        + 0.5 * jnp.sum((y["u"] - theta["u"]) ** 2)
    )


def _pytree_closed_form(theta, a):
    # ∂/∂u: (u a - 1) a + (u - θu) = 0, ∂/∂v: v - θv = 0
    return {"u": (a + theta["u"]) / (a**2 + 1), "v": theta["v"]}


@pytest.mark.parametrize("batched_leaf", ["u", "v"])
def test_grad_of_vmap_with_one_shared_and_one_batched_leaf(batched_leaf):
    @custom_root(conditions.stationarity(_pytree_objective))
    def solve(init, theta, a):
        return _pytree_closed_form(theta, a)

    def loss(solution_fn, theta, a):
        y = solution_fn(theta, a)
        return jnp.sum(y["u"] ** 2) + jnp.sum(jnp.sin(y["v"]))

    implicit = lambda t, a: loss(lambda t_, a_: solve(t_, t_, a_), t, a)
    exact = lambda t, a: loss(_pytree_closed_form, t, a)
    theta = {"u": jnp.arange(3.0), "v": jnp.ones(2)}
    batch = {"u": jnp.arange(12.0).reshape(4, 3) / 10, "v": jnp.ones((4, 2))}
    axes = {"u": None, "v": None, batched_leaf: 0}  # one leaf of θ shared
    a = jnp.linspace(0.5, 2.0, 4)[:, None] * jnp.ones(3)

    def total(fn):
        return lambda theta_: jnp.sum(jax.vmap(fn, (axes, 0))(theta_, a))

    theta_batch = {k: batch[k] if k == batched_leaf else theta[k] for k in theta}
    want = jax.grad(total(exact))(theta_batch)
    assert _close(jax.grad(total(implicit))(theta_batch), want)
    assert _close(jax.jacfwd(total(implicit))(theta_batch), want)
    per_example = jax.vmap(jax.grad(implicit), (axes, 0))(theta_batch, a)
    summed = {k: v if k == batched_leaf else v.sum(0) for k, v in per_example.items()}
    assert _close(summed, want)


def test_imaml_meta_gradient_of_the_mean_over_tasks():
    """iMAML (Rajeswaran et al. 2019): w_i = argmin ½‖X_i w - y_i‖² + ½λ‖w - θ‖²
    for each task; the meta-loss is the mean validation loss; θ and λ are shared."""
    keys = jax.random.split(jax.random.key(0), 4)
    tasks, n, d = 5, 6, 4
    X = jax.random.normal(keys[0], (tasks, n, d))
    Y = jax.random.normal(keys[1], (tasks, n))
    Xv = jax.random.normal(keys[2], (tasks, n, d))
    Yv = jax.random.normal(keys[3], (tasks, n))

    def inner(w, meta, X_, y_):
        fit = 0.5 * jnp.sum((X_ @ w - y_) ** 2)
        return fit + 0.5 * meta["lam"] * jnp.sum((w - meta["theta"]) ** 2)

    def closed_form(meta, X_, y_):
        H = X_.T @ X_ + meta["lam"] * jnp.eye(d)
        return jnp.linalg.solve(H, X_.T @ y_ + meta["lam"] * meta["theta"])

    solve = custom_root(conditions.stationarity(inner))(
        lambda init, meta, X_, y_: closed_form(meta, X_, y_)
    )

    def meta_loss(adapt, meta):
        def task(X_, y_, Xv_, yv_):
            return jnp.mean((Xv_ @ adapt(meta, X_, y_) - yv_) ** 2)

        return jnp.mean(jax.vmap(task)(X, Y, Xv, Yv))

    implicit = lambda meta: meta_loss(lambda m, X_, y_: solve(None, m, X_, y_), meta)
    meta = {"theta": jnp.linspace(-1.0, 1.0, d), "lam": jnp.array(2.0)}
    want = jax.grad(lambda m: meta_loss(closed_form, m))(meta)
    assert _close(jax.grad(implicit)(meta), want)
    assert _close(jax.jit(jax.grad(implicit))(meta), want)
    assert _close(jax.jacfwd(implicit)(meta), want)


# ------------------------------------------------------------- failed solves


DIAG = jnp.array([1.0, 4.0, 10.0])
COTANGENT = jnp.array([0.0, 0.0, 1.0])  # right answer: A⁻¹ e₃ = 0.1 e₃


def _linear(y, b):
    return DIAG * y - b


SYMMETRIC = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})
FAILING = {
    "diverging Neumann": (Neumann(steps=100, scale=0.3), DIAG, lx.RESULTS.breakdown),
    "short Neumann": (
        Neumann(steps=3, scale=0.05, rtol=1e-6),
        DIAG,
        lx.RESULTS.max_steps_reached,
    ),
    "short CG": (CG(rtol=1e-10, max_steps=1), DIAG, lx.RESULTS.max_steps_reached),
    # with b = 1: pᵀAp = 1 - 4 + 2 < 0 at the first step
    "indefinite CG": (
        CG(rtol=1e-10),
        jnp.array([1.0, -4.0, 2.0]),
        lx.RESULTS.breakdown,
    ),
}


@pytest.mark.parametrize("name", list(FAILING))
def test_a_failed_adjoint_solve_is_a_failure_and_raises(name):
    solver, diag, status = FAILING[name]
    F = lambda y, b: diag * y - b
    b = jnp.ones(3)
    y = b / diag
    u = jnp.ones(3)  # not an eigenvector, so that CG takes more than one step
    _, stats = root_vjp(F, y, (b,), u, linear_solver=solver, throw=False)
    assert stats.result == status
    with pytest.raises(RuntimeError):
        jax.block_until_ready(root_vjp(F, y, (b,), u, linear_solver=solver))
    with pytest.raises(RuntimeError):
        jax.block_until_ready(root_jvp(F, y, (b,), (b,), linear_solver=solver))
    solve = custom_root(F, solver, tags=SYMMETRIC)(lambda init, b_: b_ / diag)
    with pytest.raises(RuntimeError):
        jax.block_until_ready(jax.grad(lambda b_: solve(None, b_) @ u)(b))
    with pytest.raises(RuntimeError):
        jax.block_until_ready(jax.jvp(lambda b_: solve(None, b_), (b,), (b,)))
    lenient = custom_root(F, solver, tags=SYMMETRIC, throw=False)(solve.__wrapped__)
    jax.block_until_ready(jax.grad(lambda b_: lenient(None, b_) @ u)(b))


def test_the_diverging_neumann_series_of_the_issue():
    # (I - 0.3 A) has the eigenvalue -2: the series diverges on the third axis
    solver = Neumann(steps=100, scale=0.3)
    (ct,), stats = root_vjp(
        _linear, DIAG**-1, (jnp.ones(3),), COTANGENT, linear_solver=solver, throw=False
    )
    assert float(jnp.abs(ct[2])) > 1e20  # what the series gives
    assert stats.result == lx.RESULTS.breakdown
    assert float(stats.residual) > 1e20
    good = Neumann(steps=200, scale=0.15)  # |1 - 0.15 λ| <= 0.85
    (ct,), stats = root_vjp(
        _linear, DIAG**-1, (jnp.ones(3),), COTANGENT, linear_solver=good
    )
    assert _close(ct, 0.1 * COTANGENT, 1e-8) and stats.result == lx.RESULTS.successful


def test_hypergradient_reports_and_raises_a_failed_adjoint_solve():
    problem = bx.bilevel.BilevelProblem(
        outer=lambda x, y, _: jnp.sum(y),
        inner=lambda x, y, _: 0.5 * jnp.sum(DIAG * y**2) - x @ y,
    )
    x, y0 = jnp.ones(3), jnp.zeros(3)
    inner = bx.bilevel.LBFGS(100)
    adjoint = bx.implicit.ImplicitAdjoint(Neumann(steps=100, scale=0.3))
    *_, stats = bx.bilevel.hypergradient(problem, x, y0, inner, adjoint, throw=False)
    assert stats.linear_result == lx.RESULTS.breakdown
    with pytest.raises(RuntimeError, match=r"adjoint.*RESULTS\.breakdown"):
        jax.block_until_ready(bx.bilevel.hypergradient(problem, x, y0, inner, adjoint))
    good = bx.implicit.ImplicitAdjoint(CG(rtol=1e-12))
    _, grad, _, stats = bx.bilevel.hypergradient(problem, x, y0, inner, good)
    assert _close(grad, 1 / DIAG, 1e-8) and stats.linear_result == lx.RESULTS.successful


# ------------------------------------------------------------------ warm starts


def test_root_vjp_warm_start_gives_the_cold_answer():
    d = jnp.logspace(0, 4, 200)
    f = lambda y, x: 0.5 * jnp.sum(d * y**2) + 0.25 * jnp.sum(y**4) - x @ y
    F = conditions.stationarity(f)
    x = jnp.linspace(-1.0, 1.0, 200)
    y = jnp.zeros(200)  # any point: the Hessian diag(d + 3y²) is positive definite
    u = jnp.ones(200)
    _, first = root_vjp(F, y, (x,), u, linear_solver=CG(rtol=1e-12))
    y2 = y + 0.01  # the next outer step: a nearby system
    (cold,), cold_stats = root_vjp(F, y2, (x,), u, linear_solver=CG(rtol=1e-12))
    (warm,), warm_stats = root_vjp(
        F, y2, (x,), u, linear_solver=CG(rtol=1e-12), options={"y0": first.solution}
    )
    assert _close(warm, cold, 1e-10)
    assert int(warm_stats.num_steps) < int(cold_stats.num_steps)
    assert _close(warm, u / (d + 3 * y2**2), 1e-10)  # ∂_x F = -I
