"""Property-based tests of the implicit engine on random well-posed problems."""

import jax
import jax.numpy as jnp
import lineax as lx
from hypothesis import given, settings, strategies as st

from bilevax.implicit import conditions, custom_root, root_jvp, root_vjp


def _quadratic(seed, n, m):
    """min_y ½ yᵀ H y - yᵀ (B θ) with random SPD H (n×n) and B (n×m)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    M = jax.random.normal(k1, (n, n))
    H = M @ M.T / n + jnp.eye(n)
    B = jax.random.normal(k2, (n, m))
    f = lambda y, theta: 0.5 * y @ H @ y - y @ (B @ theta)
    return H, B, f


problems = st.tuples(st.integers(0, 2**16), st.integers(1, 12), st.integers(1, 6))


@settings(max_examples=5, deadline=None)
@given(problems)
def test_implicit_jacobian_matches_dense_solve(problem):
    seed, n, m = problem
    H, B, f = _quadratic(seed, n, m)

    @custom_root(conditions.stationarity(f), lx.CG(rtol=1e-12, atol=1e-12))
    def solve(init, theta):
        return jnp.linalg.solve(H, B @ theta)

    theta = jnp.linspace(-1.0, 1.0, m)
    jac = jax.jacrev(solve, argnums=1)(None, theta)
    assert jnp.allclose(jac, jnp.linalg.solve(H, B), rtol=1e-8, atol=1e-10)


@settings(max_examples=5, deadline=None)
@given(problems, st.integers(0, 2**16))
def test_jvp_and_vjp_are_transposes(problem, seed_uv):
    seed, n, m = problem
    H, B, f = _quadratic(seed, n, m)
    F = conditions.stationarity(f)
    theta = jnp.ones(m)
    y = jnp.linalg.solve(H, B @ theta)
    ku, kv = jax.random.split(jax.random.key(seed_uv))
    u, v = jax.random.normal(ku, (n,)), jax.random.normal(kv, (m,))
    solver = lx.GMRES(rtol=1e-12, atol=1e-12)
    Jv, _ = root_jvp(F, y, (theta,), (v,), linear_solver=solver)
    (JTu,), _ = root_vjp(F, y, (theta,), u, linear_solver=solver)
    assert jnp.allclose(u @ Jv, JTu @ v, rtol=1e-8, atol=1e-10)


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_pytree_solutions_of_random_shapes(seed, sizes):
    """A dict-of-arrays solution with random leaf shapes: matches the flat problem."""
    n = sum(sizes)
    H, B, f = _quadratic(seed, n, 2)
    names = [f"leaf{i}" for i in range(len(sizes))]
    splits = jnp.cumsum(jnp.array(sizes))[:-1].tolist()
    unflatten = lambda y: dict(zip(names, jnp.split(y, splits), strict=True))
    flatten = lambda tree: jnp.concatenate([tree[k] for k in names])

    @custom_root(conditions.stationarity(lambda t, theta: f(flatten(t), theta)))
    def solve(init, theta):
        return unflatten(jnp.linalg.solve(H, B @ theta))

    jac = jax.jacfwd(lambda th: flatten(solve(None, th)))(jnp.ones(2))
    assert jnp.allclose(jac, jnp.linalg.solve(H, B), rtol=1e-8, atol=1e-10)
