import jax
import jax.numpy as jnp
import lineax as lx
import pytest

from bilevax.implicit import Neumann


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
