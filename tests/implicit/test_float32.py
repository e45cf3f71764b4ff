"""float32 works: run in a fresh interpreter so JAX keeps its default precision."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, lineax as lx
    assert not jax.config.jax_enable_x64
    # On GPU, float32 matrix products default to TF32 (about 3 digits), which would
    # limit the reference solution and the Hessian products alike.
    jax.config.update("jax_default_matmul_precision", "highest")
    from bilevax.implicit import Neumann, conditions, custom_root, root_vjp

    X = jax.random.normal(jax.random.key(0), (60, 8))
    b = X @ jnp.ones(8) + 0.1 * jax.random.normal(jax.random.key(1), (60,))
    Xv = jax.random.normal(jax.random.key(2), (40, 8)); bv = Xv @ jnp.ones(8)
    def inner(w, x):
        return 0.5 * jnp.sum((X @ w - b) ** 2) + 0.5 * jnp.sum(jnp.exp(x) * w**2)
    outer = lambda w: 0.5 * jnp.sum((Xv @ w - bv) ** 2)
    exact = lambda x: jnp.linalg.solve(X.T @ X + jnp.diag(jnp.exp(x)), X.T @ b)
    x = jnp.linspace(-1.0, 1.0, 8)
    want = jax.grad(lambda x: outer(exact(x)))(x)
    for solver in [None, lx.CG(rtol=1e-6, atol=1e-6), lx.GMRES(rtol=1e-6, atol=1e-6),
                   Neumann(steps=200)]:
        condition = conditions.stationarity(inner)
        solve = custom_root(condition, solver)(lambda i, x: exact(x))
        got = jax.jit(jax.grad(lambda x: outer(solve(None, x))))(x)
        assert got.dtype == jnp.float32, got.dtype
        err = jnp.linalg.norm(got - want) / jnp.linalg.norm(want)
        assert err < 1e-4, (solver, err)
    w = exact(x)
    (ct,), stats = root_vjp(conditions.stationarity(inner), w, (x,), jax.grad(outer)(w))
    assert ct.dtype == jnp.float32 and stats.residual < 1e-4
    print("float32 ok")
    """
)


def test_float32_hypergradients():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "float32 ok" in out.stdout
