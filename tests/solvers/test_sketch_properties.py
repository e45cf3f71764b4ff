"""Property-based tests of the sketching solvers on random well-posed systems:
random sizes, conditioning and symmetry, against a dense solve; and the sketched
solve's transpose (used by reverse mode) against the dense transpose."""

import jax
import jax.numpy as jnp
import lineax as lx
import pytest
from hypothesis import given, settings, strategies as st

from bilevax.solvers.sketch import GaussianSketch, RandomizedKaczmarz, SketchAndProject


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _matrix(seed, n, cond, symmetric):
    """A random `n×n` matrix with singular values in `[1, cond]`."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    U, _ = jnp.linalg.qr(jax.random.normal(k1, (n, n)))
    V = U if symmetric else jnp.linalg.qr(jax.random.normal(k2, (n, n)))[0]
    signs = jnp.where(jnp.arange(n) % 3 == 0, -1.0, 1.0) if symmetric else 1.0
    return U @ jnp.diag(signs * jnp.geomspace(1.0, cond, n)) @ V.T


systems = st.tuples(
    st.integers(0, 2**16),  # seed
    st.integers(2, 24),  # n
    st.sampled_from([1.0, 3.0, 10.0]),  # condition number
    st.booleans(),  # symmetric (indefinite) or not
)
solvers = st.sampled_from(
    [
        RandomizedKaczmarz(rtol=1e-10),
        SketchAndProject(4, rtol=1e-10),
        GaussianSketch(4, rtol=1e-10),
    ]
)


@settings(max_examples=5, deadline=None)
@given(systems, solvers)
def test_solution_matches_dense_solve(system, solver):
    seed, n, cond, symmetric = system
    A = _matrix(seed, n, cond, symmetric)
    b = jax.random.normal(jax.random.key(seed + 1), (n,))
    solution = lx.linear_solve(lx.MatrixLinearOperator(A), b, solver, throw=False)
    assert solution.result == lx.RESULTS.successful
    dense = jnp.linalg.solve(A, b)
    error = jnp.linalg.norm(solution.value - dense) / jnp.linalg.norm(dense)
    assert error <= 1e-10 * cond * 10


@settings(max_examples=3, deadline=None)
@given(systems, solvers)
def test_vjp_through_the_solve_is_the_transposed_solve(system, solver):
    """d/db ⟨u, A⁻¹b⟩ = A⁻ᵀu: lineax transposes the sketched solve for reverse
    mode, so `<u, J v> = <Jᵀ u, v>` with `J = A⁻¹`."""
    seed, n, cond, symmetric = system
    A = _matrix(seed, n, cond, symmetric)
    ku, kv = jax.random.split(jax.random.key(seed + 2))
    u, v = jax.random.normal(ku, (n,)), jax.random.normal(kv, (n,))
    op = lx.MatrixLinearOperator(A)
    solve = lambda b: lx.linear_solve(op, b, solver).value
    JTu = jax.grad(lambda b: u @ solve(b))(v)
    assert jnp.allclose(u @ solve(v), JTu @ v, rtol=1e-7, atol=1e-9)
    assert jnp.allclose(JTu, jnp.linalg.solve(A.T, u), rtol=1e-7, atol=1e-8)
