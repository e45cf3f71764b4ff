"""Calls that jaxopt's implicit differentiation accepts work with bilevax's
decorators: the situations of jaxopt's `tests/implicit_diff_test.py` and of the
implicit-diff cases of its solver tests (same problems, data and expected values),
and solvers JAX cannot trace (SciPy, NumPy) under `custom_root` (issue 18.7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from sklearn import datasets

from bilevax.implicit import (
    conditions,
    custom_root,
    root_jvp,
    root_vjp,
)

X_REG, Y_REG = (jnp.asarray(a) for a in datasets.make_regression(10, 3, random_state=0))
LAM = 5.0


def ridge_objective(params, lam, X, y):
    residuals = X @ params - y
    return 0.5 * jnp.mean(residuals**2) + 0.5 * lam * jnp.sum(params**2)


def ridge_solver(init_params, lam, X, y):
    del init_params
    return jnp.linalg.solve(X.T @ X + lam * len(y) * jnp.eye(X.shape[1]), X.T @ y)


def _ridge_jac_lam(X, y, lam):
    """d w*/d lam = -(XᵀX + lam n I)⁻¹ n w*, the closed form of jaxopt's
    finite-difference `ridge_solver_jac`."""
    n = len(y)
    w = ridge_solver(None, lam, X, y)
    return -jnp.linalg.solve(X.T @ X + lam * n * jnp.eye(X.shape[1]), n * w)


def test_root_vjp_and_jvp_of_ridge():
    F = jax.grad(ridge_objective)
    sol = ridge_solver(None, LAM, X_REG, Y_REG)
    want = _ridge_jac_lam(X_REG, Y_REG, LAM)
    vjp = lambda g: root_vjp(F, sol, (LAM, X_REG, Y_REG), g)[0][0]
    assert jnp.allclose(jax.vmap(vjp)(jnp.eye(3)), want, rtol=1e-8)
    tangents = (1.0, jnp.zeros_like(X_REG), jnp.zeros_like(Y_REG))
    jvp, _ = root_jvp(F, sol, (LAM, X_REG, Y_REG), tangents)
    assert jnp.allclose(jvp, want, rtol=1e-8)


@pytest.mark.parametrize("has_aux", [False, True])
def test_custom_root_with_keywords_named_like_the_condition_arguments(has_aux):
    """jaxopt's test_custom_root(_with_has_aux): `y=` is a keyword of the call and
    `y` is also the first argument name of `OptimalityCondition.__call__`."""
    solver = ridge_solver
    if has_aux:
        solver = lambda init_params, lam, X, y: (ridge_solver(None, lam, X, y), None)
    for condition in [
        jax.grad(ridge_objective),
        conditions.stationarity(ridge_objective),
    ]:
        decorated = custom_root(condition, has_aux=has_aux)(solver)
        out = decorated(None, lam=LAM, X=X_REG, y=Y_REG)
        sol = out[0] if has_aux else out
        assert jnp.allclose(sol, ridge_solver(None, LAM, X_REG, Y_REG), rtol=1e-10)
        jac = jax.jacrev(decorated, argnums=1)(None, LAM, X=X_REG, y=Y_REG)
        jac = jac[0] if has_aux else jac
        assert jnp.allclose(jac, _ridge_jac_lam(X_REG, Y_REG, LAM), rtol=1e-8)


def test_default_init_and_keyword_only_parameters():
    @custom_root(conditions.stationarity(ridge_objective))
    def ridge(init_params=None, lam=1.0, X=None, y=None):
        return ridge_solver(init_params, lam, X, y)

    grad = jax.grad(lambda lam: jnp.sum(ridge(lam=lam, X=X_REG, y=Y_REG)))(LAM)
    assert jnp.allclose(grad, jnp.sum(_ridge_jac_lam(X_REG, Y_REG, LAM)), rtol=1e-8)
    # The default lam = 1.0 is bound and used by solver and condition alike.
    assert jnp.allclose(ridge(X=X_REG, y=Y_REG), ridge_solver(None, 1.0, X_REG, Y_REG))
    with pytest.raises(TypeError, match="Bad call to `ridge"):
        ridge(X=X_REG, y=Y_REG, mu=3.0)


def test_conditions_with_aux_objectives_and_maps():
    def objective(w, lam):
        value = 0.5 * jnp.sum((w - 1.0) ** 2) + 0.5 * lam * jnp.sum(w**2)
        return value, {"value": value}

    solve = custom_root(conditions.stationarity(objective, has_aux=True))(
        lambda init, lam: jnp.ones(2) / (1 + lam)
    )
    assert jnp.allclose(jax.grad(lambda lam: solve(None, lam).sum())(1.0), -0.5)
    T = lambda y, a: (0.5 * y + a, "aux")  # y* = 2a
    solve_fp = custom_root(conditions.fixed_point(T, has_aux=True))(
        lambda init, a: 2 * a
    )
    assert jnp.allclose(jax.grad(lambda a: solve_fp(None, a))(1.5), 2.0)
    F = conditions.projected_gradient(
        objective, lambda v, hi: jnp.clip(v, 0, hi), has_aux=True
    )
    assert jnp.allclose(F(jnp.full(2, 0.2), 0.2, 1.0), jnp.zeros(2))  # the corner


def _lasso_data():
    X, y = datasets.make_regression(20, 6, n_informative=3, random_state=0)
    return jnp.asarray(X), jnp.asarray(y)


def _soft(v, lam, scaling=1.0):
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - lam * scaling, 0.0)


def test_prox_and_projection_conditions_take_jaxopt_keywords():
    """Lasso (jaxopt's ProximalGradient implicit-diff test) and non-negative least
    squares (its ProjectedGradient one), the set/prox parameter passed as
    `hyperparams_prox=` / `hyperparams_proj=` and the data positionally."""
    X, y = _lasso_data()
    f = lambda w, X, y: 0.5 * jnp.mean((X @ w - y) ** 2)
    eta = float(len(y) / jnp.linalg.eigvalsh(X.T @ X)[-1])

    def ista(init, hyperparams_prox, X, y):  # jaxopt's run(init, hyperparams, *args)
        step = lambda _, w: _soft(w - eta * jax.grad(f)(w, X, y), hyperparams_prox, eta)
        return jax.lax.fori_loop(0, 1500, step, init)

    lasso = custom_root(conditions.prox_gradient(f, _soft, eta))(ista)
    lam = 0.3 * float(jnp.max(jnp.abs(X.T @ y)) / len(y))  # 0.3 λ_max
    w = lasso(jnp.zeros(6), X=X, y=y, hyperparams_prox=lam)
    support = w != 0
    assert 0 < int(support.sum()) < 6
    # On the support, X_Sᵀ(X_S w_S - y)/n + lam sign(w_S) = 0: dw_S/dlam closed form.
    XS = X[:, support]
    want = -jnp.linalg.solve(XS.T @ XS / len(y), jnp.sign(w[support]))
    jac = jax.jacfwd(lambda lam: lasso(jnp.zeros(6), X=X, y=y, hyperparams_prox=lam))(
        lam
    )
    assert jnp.allclose(jac[support], want, rtol=1e-6)
    assert jnp.all(jac[~support] == 0)
    # Called directly with jaxopt's keyword, the condition vanishes at the solution.
    F = conditions.prox_gradient(f, _soft, eta)
    assert jnp.allclose(F(w, X, y, hyperparams_prox=lam), F(w, lam, X, y))

    # Projected gradient onto a box [0, hi]: the clipped coordinates follow hi.
    box = lambda v, hi: jnp.clip(v, 0.0, hi)
    G = conditions.projected_gradient(f, box, eta)
    solve = custom_root(G)(
        lambda init, hyperparams_proj, X, y: box(
            jnp.linalg.lstsq(X, y)[0], hyperparams_proj
        )
    )
    X2 = jnp.eye(3)
    y2 = jnp.array([2.0, -1.0, 0.5])
    jac = jax.jacrev(lambda hi: solve(None, X=X2, y=y2, hyperparams_proj=hi))(1.0)
    assert jnp.allclose(jac, jnp.array([1.0, 0.0, 0.0]))


# ---------------------------------------------------------------------------------
# Solvers JAX cannot trace.
# ---------------------------------------------------------------------------------

A = jnp.array([[3.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.5, 2.0, 5.0]])
B = jnp.array([1.0, 2.0, 3.0])


def _scipy_root_solver():
    @custom_root(conditions.OptimalityCondition(lambda x, b: A @ x - b))
    def solve(init, b):
        return scipy.optimize.root(lambda x: np.asarray(A) @ x - b, init, tol=1e-13).x

    return solve


def test_scipy_root_under_custom_root():
    """A x = b solved by scipy.optimize.root: d(Σx*)/db = A⁻ᵀ1, in every mode."""
    solve = _scipy_root_solver()
    want = jnp.linalg.solve(A.T, jnp.ones(3))
    loss = lambda b: jnp.sum(solve(jnp.zeros(3), b))
    assert jnp.allclose(jax.grad(loss)(B), want, rtol=1e-10)
    assert jnp.allclose(jax.jit(jax.grad(loss))(B), want, rtol=1e-10)
    assert jnp.allclose(
        jax.jacfwd(lambda b: solve(jnp.zeros(3), b))(B), jnp.linalg.inv(A), rtol=1e-9
    )
    bs = jnp.stack([B, 2 * B, -B])
    assert jnp.allclose(jax.vmap(jax.grad(loss))(bs), want, rtol=1e-10)
    assert jnp.allclose(
        jax.vmap(lambda b: solve(jnp.zeros(3), b))(bs),
        jnp.linalg.solve(A, bs.T).T,
        rtol=1e-10,
    )


def test_scipy_minimize_ridge_and_numpy_lstsq():
    X, y = X_REG, Y_REG

    @custom_root(conditions.stationarity(ridge_objective))
    def scipy_ridge(init_params, lam, X, y):
        fun = lambda w: float(ridge_objective(w, lam, X, y))
        jac = lambda w: np.asarray(jax.grad(ridge_objective)(w, lam, X, y))
        res = scipy.optimize.minimize(
            fun, init_params, jac=jac, method="BFGS", tol=1e-12
        )
        return res.x

    jac = jax.jacrev(scipy_ridge, argnums=1)(jnp.zeros(3), LAM, X=X, y=y)
    assert jnp.allclose(jac, _ridge_jac_lam(X, y, LAM), rtol=1e-6)

    # Least squares by numpy (no init, so the output shape is given).
    @custom_root(
        conditions.stationarity(lambda w, X, y: 0.5 * jnp.sum((X @ w - y) ** 2)),
        result_shape=jax.ShapeDtypeStruct((3,), X.dtype),
    )
    def lstsq(init, X, y):
        return np.linalg.lstsq(np.asarray(X), np.asarray(y), rcond=None)[0]

    # d(Σw)/dy = X (XᵀX)⁻¹ 1
    want = X @ jnp.linalg.solve(X.T @ X, jnp.ones(3))
    assert jnp.allclose(jax.grad(lambda y: lstsq(None, X, y).sum())(y), want, rtol=1e-8)
    # Second order: the hessian of a quadratic of w*(y) is exact too.
    H = jax.hessian(lambda y: jnp.sum(lstsq(None, X, y) ** 2))(y)
    P = X @ jnp.linalg.inv(X.T @ X)
    assert jnp.allclose(H, 2 * P @ P.T, rtol=1e-7)


def test_non_traceable_solver_without_shape_is_a_named_error():
    @custom_root(conditions.OptimalityCondition(lambda x, b: A @ x - b))
    def solve(init, b):
        return np.linalg.solve(np.asarray(A), np.asarray(b))

    with pytest.raises(TypeError, match="result_shape"):
        jax.grad(lambda b: solve(None, b).sum())(B)
