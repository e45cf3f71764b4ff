import jax
import jax.numpy as jnp
import lineax as lx
import pytest

from bilevax.implicit import CG, Neumann


def _spd(n, seed=0, cond=10.0):
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(seed), (n, n)))
    return q @ jnp.diag(jnp.geomspace(1.0, cond, n)) @ q.T


def test_neumann_solves_spd_system_with_estimated_scale():
    A = _spd(12)
    b = jnp.arange(12.0)
    sol = lx.linear_solve(lx.MatrixLinearOperator(A), b, Neumann(steps=600))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), rtol=1e-8)
    assert 0 < float(sol.stats["scale"]) < 2 / 10.0


def test_neumann_negative_definite_operator_gets_negative_scale():
    """The Jacobian ∂T - I of a contraction T is negative definite."""
    A = -_spd(6, seed=1, cond=3.0) / 4.0
    b = jnp.ones(6)
    sol = lx.linear_solve(lx.MatrixLinearOperator(A), b, Neumann(steps=400))
    assert float(sol.stats["scale"]) < 0
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), rtol=1e-8)


def test_neumann_steps_zero_is_scaled_identity():
    A = _spd(5)
    b = jnp.ones(5)
    sol = lx.linear_solve(lx.MatrixLinearOperator(A), b, Neumann(steps=0, scale=0.1))
    assert jnp.allclose(sol.value, 0.1 * b)


def test_neumann_transpose_for_nonsymmetric_operator():
    A = _spd(6) + 0.3 * jnp.triu(jnp.ones((6, 6)), 1)
    b = jnp.arange(6.0)
    solve = lambda v: (
        lx.linear_solve(lx.MatrixLinearOperator(A), v, Neumann(steps=2000)).value
    )
    # Reverse mode through the solve uses the transposed series.
    grad = jax.grad(lambda v: solve(v) @ b)(jnp.ones(6))
    assert jnp.allclose(grad, jnp.linalg.solve(A.T, b), rtol=1e-7)


def test_neumann_pytree_operator():
    A = _spd(4)
    op = lx.FunctionLinearOperator(
        lambda v: {
            "a": A[:2] @ jnp.concatenate([v["a"], v["b"]]),
            "b": A[2:] @ jnp.concatenate([v["a"], v["b"]]),
        },
        {
            "a": jax.ShapeDtypeStruct((2,), jnp.float64),
            "b": jax.ShapeDtypeStruct((2,), jnp.float64),
        },
    )
    b = {"a": jnp.ones(2), "b": jnp.zeros(2)}
    sol = lx.linear_solve(op, b, Neumann(steps=800)).value
    assert jnp.allclose(
        jnp.concatenate([sol["a"], sol["b"]]),
        jnp.linalg.solve(A, jnp.array([1.0, 1.0, 0.0, 0.0])),
        rtol=1e-8,
    )


def test_neumann_rejects_nonsquare():
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(
            lx.MatrixLinearOperator(jnp.ones((3, 2))), jnp.ones(3), Neumann()
        )


def test_cg_solves_spd_system_and_reports_steps():
    A = _spd(30, cond=100.0)
    b = jnp.arange(30.0)
    sol = lx.linear_solve(lx.MatrixLinearOperator(A), b, CG(rtol=1e-12))
    assert jnp.allclose(sol.value, jnp.linalg.solve(A, b), rtol=1e-9)
    assert sol.result == lx.RESULTS.successful
    assert 1 <= int(sol.stats["num_steps"]) <= 60


def test_cg_float32_operator_with_small_eigenvalues():
    """Regression: float32, 20,000 unknowns, eigenvalues in [1e-3, 1e-2] (a weakly
    regularised Hessian). A breakdown test scaled by n·ε would reject this system."""
    n = 20_000
    d = jnp.geomspace(1e-3, 1e-2, n).astype(jnp.float32)
    op = lx.DiagonalLinearOperator(d)
    b = jnp.ones(n, jnp.float32)
    sol = lx.linear_solve(op, b, CG(rtol=1e-5, max_steps=1000), throw=False)
    assert sol.result == lx.RESULTS.successful
    assert sol.value.dtype == jnp.float32
    assert jnp.allclose(sol.value, b / d, rtol=1e-3)


def test_cg_reports_max_steps_and_breakdown():
    A = _spd(30, cond=1e4)
    b = jnp.ones(30)
    short = lx.linear_solve(
        lx.MatrixLinearOperator(A), b, CG(rtol=1e-14, max_steps=3), throw=False
    )
    assert short.result == lx.RESULTS.max_steps_reached
    assert int(short.stats["num_steps"]) == 3
    indefinite = jnp.diag(jnp.array([1.0, -1.0, 2.0]))
    broken = lx.linear_solve(
        lx.MatrixLinearOperator(indefinite), jnp.ones(3), CG(rtol=1e-10), throw=False
    )
    assert broken.result == lx.RESULTS.breakdown
    zero = lx.linear_solve(lx.MatrixLinearOperator(A), jnp.zeros(30), CG(rtol=1e-10))
    assert jnp.all(zero.value == 0) and int(zero.stats["num_steps"]) == 0


def test_cg_under_vmap_and_reverse_mode():
    A = _spd(10, seed=3)
    solve = lambda b: (
        lx.linear_solve(lx.MatrixLinearOperator(A), b, CG(rtol=1e-12)).value
    )
    bs = jax.random.normal(jax.random.key(0), (4, 10))
    assert jnp.allclose(jax.vmap(solve)(bs), jnp.linalg.solve(A, bs.T).T, rtol=1e-8)
    grad = jax.grad(lambda b: solve(b) @ jnp.arange(10.0))(bs[0])
    assert jnp.allclose(grad, jnp.linalg.solve(A, jnp.arange(10.0)), rtol=1e-8)


def test_cg_bad_arguments():
    with pytest.raises(ValueError, match="non-negative"):
        CG(rtol=-1.0)
    with pytest.raises(ValueError, match="square"):
        lx.linear_solve(
            lx.MatrixLinearOperator(jnp.ones((3, 2))), jnp.ones(3), CG(1e-6)
        )


def _ill_conditioned_system():
    d = jnp.logspace(0, 3, 40)
    M = 0.1 * jax.random.normal(jax.random.key(3), (40, 40))
    A = jnp.diag(d) + M @ M.T
    b = jax.random.normal(jax.random.key(4), (40,))
    return A, b


def test_cg_preconditioner_same_solution_in_fewer_steps():
    A, b = _ill_conditioned_system()
    op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    want = jnp.linalg.solve(A, b)
    cold = lx.linear_solve(op, b, CG(rtol=1e-10))
    jacobi = lx.DiagonalLinearOperator(1 / jnp.diag(A))
    for solver, options in [
        (CG(rtol=1e-10, preconditioner=jacobi), None),
        (CG(rtol=1e-10), {"preconditioner": jacobi}),
    ]:
        pre = lx.linear_solve(op, b, solver, options=options)
        assert jnp.linalg.norm(pre.value - want) <= 1e-8 * jnp.linalg.norm(want)
        assert int(pre.stats["num_steps"]) < int(cold.stats["num_steps"]) / 2
    # a preconditioner that is not positive definite is a breakdown
    bad = lx.DiagonalLinearOperator(-jnp.ones(40))
    sol = lx.linear_solve(op, b, CG(1e-10, preconditioner=bad), throw=False)
    assert sol.result == lx.RESULTS.breakdown
    with pytest.raises(ValueError, match="preconditioner"):
        lx.linear_solve(
            op,
            b,
            CG(
                1e-10,
                preconditioner=lx.IdentityLinearOperator(
                    jax.ShapeDtypeStruct((3,), b.dtype)
                ),
            ),
        )


def test_cg_warm_start_same_solution_in_fewer_steps():
    A, b = _ill_conditioned_system()
    op = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    first = lx.linear_solve(op, b, CG(rtol=1e-10))
    b2 = b + 1e-3 * jax.random.normal(jax.random.key(5), b.shape)  # a nearby system
    cold = lx.linear_solve(op, b2, CG(rtol=1e-10))
    warm = lx.linear_solve(op, b2, CG(rtol=1e-10), options={"y0": first.value})
    want = jnp.linalg.solve(A, b2)
    for sol in (cold, warm):
        assert jnp.linalg.norm(sol.value - want) <= 1e-8 * jnp.linalg.norm(want)
    assert int(warm.stats["num_steps"]) < int(cold.stats["num_steps"])
    exact = lx.linear_solve(op, b2, CG(rtol=1e-8), options={"y0": want})
    assert int(exact.stats["num_steps"]) == 0
    with pytest.raises(ValueError, match="y0"):
        lx.linear_solve(op, b, CG(1e-10), options={"y0": jnp.zeros(3)})


def test_failed_adjoint_solve_is_explained():
    """A failed adjoint solve raises with bilevax's words: the status, the solver,
    the residual reached (by decade) and the remedies, for `root_vjp` and for the
    derivative of `custom_root`."""
    import equinox as eqx
    import lineax as lx

    from bilevax.implicit import conditions, custom_root, root_vjp

    H = jnp.diag(jnp.array([1.0, 10.0, 100.0]))
    F = conditions.stationarity(lambda y, a: 0.5 * y @ H @ y - a @ y)
    one_step = lx.GMRES(rtol=1e-12, atol=1e-12, max_steps=1, restart=1)
    expected = (
        r"status `lineax.RESULTS.max_steps_reached`.*GMRES reached a relative residual "
        r"between 1e-?\d+ and 1e-?\d+.*lineax.LU\(\)"
    )
    with pytest.raises(eqx.EquinoxRuntimeError, match="(?s)`root_vjp`: .*" + expected):
        root_vjp(F, jnp.ones(3), (jnp.ones(3),), jnp.ones(3), linear_solver=one_step)
    _, stats = root_vjp(
        F, jnp.ones(3), (jnp.ones(3),), jnp.ones(3), linear_solver=one_step, throw=False
    )
    assert stats.result == lx.RESULTS.max_steps_reached
    solve = custom_root(F, one_step)(lambda init, a: jnp.linalg.solve(H, a))
    with pytest.raises(Exception, match="(?s)`custom_root`.*" + expected):
        jax.grad(lambda a: solve(jnp.zeros(3), a).sum())(jnp.ones(3))
