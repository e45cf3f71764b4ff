"""Hypergradients match jaxopt's implicit differentiation on the same problems."""

import functools as ft

import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx
import pytest

from bilevax.implicit import conditions, custom_fixed_point, custom_root

jaxopt = pytest.importorskip("jaxopt")


def _rel(a, b):
    a, b = jnp.ravel(jnp.asarray(a)), jnp.ravel(jnp.asarray(b))
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _data(n, d, seed):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    X = jax.random.normal(k1, (n, d))
    w_true = jnp.where(jnp.arange(d) < d // 3, jax.random.normal(k2, (d,)), 0.0)
    return X, X @ w_true + 0.1 * jax.random.normal(k3, (n,))


class TestLasso:
    """`min_w 1/(2n)‖Xw - b‖² + exp(θ)‖w‖₁`, differentiated with respect to θ
    through the fixed point of proximal gradient descent."""

    X, b = _data(60, 15, 0)
    Xv, bv = _data(40, 15, 1)
    stepsize = float(60 / jnp.linalg.eigvalsh(X.T @ X)[-1])

    def f(self, w):
        return 0.5 * jnp.mean((self.X @ w - self.b) ** 2)

    def prox(self, v, theta, scaling):
        return jaxopt.prox.prox_lasso(v, jnp.exp(theta), scaling)

    def ista(self, init, theta):
        step = lambda _, w: self.prox(
            w - self.stepsize * jax.grad(self.f)(w), theta, self.stepsize
        )
        return jax.lax.fori_loop(0, 20_000, step, init)

    def outer(self, w):
        return 0.5 * jnp.mean((self.Xv @ w - self.bv) ** 2)

    def test_matches_jaxopt_custom_fixed_point(self):
        theta = jnp.log(0.05)
        init = jnp.zeros(15)
        condition = conditions.prox_gradient(self.f, self.prox, self.stepsize)
        ours = custom_root(condition, lx.GMRES(rtol=1e-12, atol=1e-12))(self.ista)

        def fixed_point(w, theta):
            v = w - self.stepsize * jax.grad(self.f)(w)
            return self.prox(v, theta, self.stepsize)

        theirs = jaxopt.implicit_diff.custom_fixed_point(
            fixed_point, solve=ft.partial(jaxopt.linear_solve.solve_gmres, tol=1e-12)
        )(self.ista)
        w = ours(init, theta)
        assert 0 < jnp.sum(w != 0) < 15  # a real sparse solution
        g_ours = jax.grad(lambda t: self.outer(ours(init, t)))(theta)
        g_theirs = jax.grad(lambda t: self.outer(theirs(init, t)))(theta)
        assert abs(g_ours) > 1e-4
        assert _rel(g_ours, g_theirs) <= 1e-6

        # Also through `custom_fixed_point`, with bilevax's own decorator.
        ours_fp = custom_fixed_point(fixed_point, lx.GMRES(rtol=1e-12, atol=1e-12))(
            self.ista
        )
        g_fp = jax.grad(lambda t: self.outer(ours_fp(init, t)))(theta)
        assert _rel(g_fp, g_theirs) <= 1e-6


class TestMultinomialLogistic:
    """L2-regularised multinomial logistic regression solved by an optimistix
    minimiser, differentiated with respect to per-class log-regularisation."""

    n, d, k = 120, 6, 4
    X = jax.random.normal(jax.random.key(2), (n, d))
    y = jnp.argmax(X @ jax.random.normal(jax.random.key(3), (d, k)), axis=1)
    Xv = jax.random.normal(jax.random.key(4), (50, d))
    yv = jnp.argmax(Xv @ jax.random.normal(jax.random.key(3), (d, k)), axis=1)

    @staticmethod
    def _cross_entropy(W, X, y):
        logits = X @ W
        return jnp.mean(
            jax.nn.logsumexp(logits, axis=1)
            - jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
        )

    def inner(self, W, theta):
        return self._cross_entropy(W, self.X, self.y) + 0.5 * jnp.sum(
            jnp.exp(theta) * W**2
        )

    def solve(self, init, theta):
        solver = optx.BFGS(rtol=1e-13, atol=1e-13)
        return optx.minimise(self.inner, solver, init, args=theta, max_steps=1000).value

    def outer(self, W):
        return self._cross_entropy(W, self.Xv, self.yv)

    def test_matches_jaxopt_custom_root(self):
        init = jnp.zeros((self.d, self.k))
        theta = jnp.log(jnp.array([0.01, 0.05, 0.1, 0.5]))
        ours = custom_root(
            conditions.stationarity(self.inner), lx.CG(rtol=1e-12, atol=1e-12)
        )(self.solve)
        theirs = jaxopt.implicit_diff.custom_root(
            jax.grad(self.inner),
            solve=ft.partial(jaxopt.linear_solve.solve_cg, tol=1e-12, maxiter=1000),
        )(self.solve)
        g_ours = jax.jit(jax.grad(lambda t: self.outer(ours(init, t))))(theta)
        g_theirs = jax.jit(jax.grad(lambda t: self.outer(theirs(init, t))))(theta)
        assert jnp.linalg.norm(g_ours) > 1e-4
        assert _rel(g_ours, g_theirs) <= 1e-6

        # Forward mode agrees with reverse mode.
        jac_fwd = jax.jacfwd(lambda t: self.outer(ours(init, t)))(theta)
        assert _rel(jac_fwd, g_theirs) <= 1e-6
