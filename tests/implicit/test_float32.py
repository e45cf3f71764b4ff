"""float32 works: run in a fresh interpreter so JAX keeps its default precision."""

import subprocess
import sys
import textwrap

import pytest

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


# Issue 18, item 4: the README pattern (`custom_root(conditions.stationarity(g))`
# around a fit, default linear solver) on L2-regularised multinomial logistic
# regression. lineax's CG declared breakdown here in float32 from about 1e3 weights
# (its threshold grows with the size); the default is now bilevax's CG.
LOGISTIC = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    assert not jax.config.jax_enable_x64
    jax.config.update("jax_default_matmul_precision", "highest")
    from bilevax.implicit import CG, conditions, custom_root, default_linear_solver

    d, k, m = int(sys.argv[1]), int(sys.argv[2]), 100
    X = jax.random.normal(jax.random.key(0), (m, d)) / jnp.sqrt(d)
    labels = jax.random.randint(jax.random.key(1), (m,), 0, k)
    T = jax.random.normal(jax.random.key(2), (d, k))

    def inner(W, lam):
        logits = X @ W
        picked = jnp.take_along_axis(logits, labels[:, None], 1)[:, 0]
        ce = jnp.mean(jax.nn.logsumexp(logits, 1) - picked)
        return ce + 0.5 * lam * jnp.sum(W**2)

    @custom_root(conditions.stationarity(inner))
    def fit(init, lam):  # gradient descent, far enough for the test
        step = lambda _, W: W - 0.5 * jax.grad(inner)(W, lam)
        return jax.lax.fori_loop(0, 200, step, init)

    condition = conditions.stationarity(inner)
    solver = default_linear_solver(condition.tags, jnp.float32, d * k)
    assert type(solver) is CG, solver
    lam = jnp.array(1e-2)
    outer = lambda lam: jnp.sum(fit(jnp.zeros((d, k)), lam) * T)
    got = jax.jit(jax.grad(outer))(lam)
    assert got.dtype == jnp.float32 and jnp.isfinite(got), got
    W = fit(jnp.zeros((d, k)), lam)
    if d * k <= 2000:  # dense reference: dW/dλ = -H⁻¹ W
        H = jax.hessian(inner)(W, lam).reshape(d * k, d * k)
        want = -T.ravel() @ jnp.linalg.solve(H, W.ravel())
    else:  # a tighter, longer CG
        tight = custom_root(condition, CG(rtol=1e-6, max_steps=20_000))(fit.__wrapped__)
        want = jax.grad(lambda lam: jnp.sum(tight(jnp.zeros((d, k)), lam) * T))(lam)
    err = abs(float(got - want)) / abs(float(want))
    assert err < 1e-3, (float(got), float(want), err)
    print("logistic ok", err)
    """
)


def _run_logistic(d, k):
    out = subprocess.run(
        [sys.executable, "-c", LOGISTIC, str(d), str(k)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "logistic ok" in out.stdout


def test_float32_default_adjoint_of_a_logistic_regression():
    _run_logistic(100, 10)  # 1e3 weights


@pytest.mark.slow
def test_float32_default_adjoint_of_a_logistic_regression_at_1e5_weights():
    _run_logistic(10_000, 10)
