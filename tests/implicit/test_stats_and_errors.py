import jax
import jax.numpy as jnp
import lineax as lx
import pytest

from bilevax.implicit import (
    ImplicitStats,
    Neumann,
    conditions,
    custom_root,
    root_jvp,
    root_vjp,
)

from ._problems import Ridge

X = jnp.linspace(-1.0, 1.0, 8)


def test_root_vjp_returns_hypergradient_term_and_stats():
    problem = Ridge()
    w = problem.solve(None, X)
    u = jax.grad(problem.outer)(w)
    F = conditions.stationarity(problem.inner)
    (ct,), stats = root_vjp(F, w, (X,), u, linear_solver=lx.CG(rtol=1e-10, atol=1e-10))
    assert isinstance(stats, ImplicitStats)
    assert jnp.allclose(ct, problem.hypergradient(X), rtol=1e-8)
    assert stats.result == lx.RESULTS.successful
    assert 1 <= int(stats.num_steps) <= 8 * 10
    assert float(stats.residual) < 1e-9


def test_root_jvp_matches_forward_mode_and_reports_stats():
    problem = Ridge()
    w = problem.solve(None, X)
    t = jnp.ones(8)
    F = conditions.stationarity(problem.inner)
    tw, stats = root_jvp(F, w, (X,), (t,))
    _, want = jax.jvp(lambda x: problem.solve(None, x), (X,), (t,))
    assert jnp.allclose(tw, want, rtol=1e-8)
    assert stats.result == lx.RESULTS.successful and float(stats.residual) < 1e-9


def test_root_vjp_under_jit_and_vmap():
    problem = Ridge()
    F = conditions.stationarity(problem.inner)

    @jax.jit
    def hypergradient(x):
        w = problem.solve(None, x)
        (ct,), stats = root_vjp(F, w, (x,), jax.grad(problem.outer)(w))
        return ct, stats.residual

    cts, residuals = jax.vmap(hypergradient)(jnp.stack([X, 2 * X, X - 1]))
    assert cts.shape == (3, 8) and residuals.shape == (3,)
    assert jnp.allclose(cts[1], problem.hypergradient(2 * X), rtol=1e-8)


# Errors are raised when a result is materialised: on GPU, dispatch is asynchronous,
# so every call that should raise is wrapped in `jax.block_until_ready`.


MAX_STEPS_CG = "status `lineax.RESULTS.max_steps_reached`.*CG reached"


def test_truncated_solve_is_reported_not_hidden():
    problem = Ridge()
    w = problem.solve(None, X)
    u = jax.grad(problem.outer)(w)
    F = conditions.stationarity(problem.inner)
    short = lx.CG(rtol=1e-14, atol=1e-14, max_steps=2)
    _, stats = root_vjp(F, w, (X,), u, linear_solver=short, throw=False)
    assert stats.result == lx.RESULTS.max_steps_reached
    assert int(stats.num_steps) == 2
    assert float(stats.residual) > 1e-6
    with pytest.raises(RuntimeError, match=MAX_STEPS_CG):
        jax.block_until_ready(root_vjp(F, w, (X,), u, linear_solver=short))
    # The decorator raises too, in reverse and in forward mode.
    solve = custom_root(F, linear_solver=short)(problem.solve)
    with pytest.raises(RuntimeError, match=MAX_STEPS_CG):
        jax.block_until_ready(jax.grad(lambda x: problem.outer(solve(None, x)))(X))
    with pytest.raises(RuntimeError, match=MAX_STEPS_CG):
        jax.block_until_ready(jax.jvp(lambda x: solve(None, x), (X,), (X,)))
    # ... unless the user opts out.
    lenient = custom_root(F, linear_solver=short, throw=False)(problem.solve)
    assert jnp.all(jnp.isfinite(jax.grad(lambda x: problem.outer(lenient(None, x)))(X)))


def test_neumann_residual_is_reported():
    problem = Ridge()
    w = problem.solve(None, X)
    F = conditions.stationarity(problem.inner)
    residuals = [
        float(root_vjp(F, w, (X,), jnp.ones(8), linear_solver=Neumann(s))[1].residual)
        for s in [1, 10, 100]
    ]
    assert residuals[0] > residuals[1] > residuals[2]


def test_structure_mismatch_names_both_structures():
    problem = Ridge()
    bad = lambda w, x: {"grad": jax.grad(problem.inner)(w, x)}
    solve = custom_root(bad)(problem.solve)
    with pytest.raises(ValueError, match=r"solution y:.*float64\[8\]") as info:
        solve(None, X)
    assert "{grad: float64[8]}" in str(info.value)
    wrong_shape = custom_root(lambda w, x: w[:3])(problem.solve)
    with pytest.raises(ValueError, match=r"float64\[3\]"):
        wrong_shape(None, X)
    with pytest.raises(ValueError, match="optimality_fn"):
        root_vjp(bad, problem.solve(None, X), (X,), jnp.ones(8))


def test_other_bad_inputs():
    problem = Ridge()
    F = conditions.stationarity(problem.inner)
    with pytest.raises(TypeError, match="callable"):
        custom_root(3.0)
    with pytest.raises(TypeError, match="floating-point"):
        custom_root(lambda y, x: y)(lambda init, x: jnp.arange(3))(None, X)
    with pytest.raises(TypeError, match="lineax solver"):
        custom_root(F, linear_solver="cg")(problem.solve)(None, X)
    with pytest.raises(ValueError, match="has_aux=True"):
        custom_root(F, has_aux=True)(problem.solve)(None, X)
    with pytest.raises(ValueError, match="cotangent"):
        root_vjp(F, problem.solve(None, X), (X,), jnp.ones(3))
    with pytest.raises(ValueError, match="steps"):
        Neumann(steps=-1)


def test_nan_solution_raises():
    problem = Ridge()
    F = conditions.stationarity(problem.inner)
    solve = custom_root(F)(lambda init, x: problem.solve(init, x) * jnp.nan)
    with pytest.raises(RuntimeError, match="non-finite"):
        jax.block_until_ready(solve(None, X))
    with pytest.raises(RuntimeError, match="non-finite"):
        jax.block_until_ready(jax.jit(solve, static_argnums=0)(None, X))
    with pytest.raises(RuntimeError, match="non-finite"):
        jax.block_until_ready(jax.grad(lambda x: jnp.sum(solve(None, x)))(X))


def test_nan_in_adjoint_solve_is_reported():
    """∂F/∂y is NaN at the solution y* = 0 (|y|^½ is not differentiable there)."""
    F = lambda y, t: (y - t) * jnp.abs(y) ** 0.5
    solve = custom_root(F)(lambda init, t: t)
    zeros = jnp.zeros(3)
    (ct,), stats = root_vjp(F, zeros, (zeros,), jnp.ones(3), throw=False)
    assert stats.result != lx.RESULTS.successful
    with pytest.raises(RuntimeError, match="non-finite"):
        jax.block_until_ready(root_vjp(F, zeros, (zeros,), jnp.ones(3)))
    with pytest.raises(RuntimeError, match="non-finite"):
        jax.block_until_ready(jax.grad(lambda t: jnp.sum(solve(None, t)))(zeros))
