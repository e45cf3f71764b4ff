"""The implicit-differentiation situations of jaxopt's solver tests, on bilevax's
decorators: fixed-point iteration, Anderson acceleration, Broyden, bisection, the
equality-constrained QP, projected and proximal gradient, and `custom_fixed_point`
of jaxopt's `implicit_diff_test.py` (issue 18). Same problems and data as jaxopt's
tests; the forward solvers are short JAX loops written here (their internals are
never differentiated), and the expected values are closed forms, or plain
autodiff of a direct solve, or central finite differences where jaxopt used them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets, linear_model

from bilevax.implicit import conditions, custom_fixed_point, custom_root

# ---------------------------------------------------------------------------------
# Forward solvers (never differentiated: custom_root/custom_fixed_point supply the
# derivative).
# ---------------------------------------------------------------------------------


def fixed_point_iteration(T, x0, *params, tol=1e-12, maxiter=4000):
    """x <- T(x) until ‖T(x) - x‖ <= tol."""

    def cond(carry):
        _, err, k = carry
        return (err > tol) & (k < maxiter)

    def body(carry):
        x, _, k = carry
        x_new = T(x, *params)
        return x_new, jnp.linalg.norm(x_new - x), k + 1

    return jax.lax.while_loop(cond, body, (x0, jnp.inf, 0))[0]


def anderson(T, x0, *params, history=5, ridge=1e-10, iters=100):
    """Anderson acceleration (type II, Walker & Ni 2011): the next iterate mixes the
    last `history` images `T(x_i)` with weights `α` minimising `‖Σ α_i (T(x_i) -
    x_i)‖² + ridge tr(FFᵀ) ‖α‖²`, `Σ α_i = 1`. The history starts filled with
    copies of `(x0, T(x0))` (duplicates share one weight)."""
    X = jnp.tile(x0, (history, 1))
    G = jnp.tile(T(x0, *params), (history, 1))

    def body(k, XG):
        X, G = XG
        F = G - X
        H = F @ F.T
        trace = jnp.trace(H)  # zero once converged: then equal weights
        H = H / jnp.where(trace > 0, trace, 1.0) + ridge * jnp.eye(history)
        alpha = jnp.linalg.solve(H, jnp.ones(history))
        x = (alpha / alpha.sum()) @ G
        i = k % history
        return X.at[i].set(x), G.at[i].set(T(x, *params))

    X, G = jax.lax.fori_loop(1, iters, body, (X, G))
    return X[jnp.argmin(jnp.linalg.norm(G - X, axis=1))]


def broyden(g, x0, *params, tol=1e-12, maxiter=200, gamma=-1.0):
    """Broyden's ("good") method for `g(x) = 0`, started from the Jacobian guess
    `γ I`, with the Sherman–Morrison update of the inverse Jacobian."""

    def cond(carry):
        _, gx, _, k = carry
        return (jnp.linalg.norm(gx) > tol) & (k < maxiter)

    def body(carry):
        x, gx, H, k = carry
        dx = -H @ gx
        x_new = x + dx
        g_new = g(x_new, *params)
        Hdg = H @ (g_new - gx)
        denom = dx @ Hdg
        ok = jnp.abs(denom) > 0
        H = H + jnp.where(ok, jnp.outer(dx - Hdg, dx @ H) / jnp.where(ok, denom, 1), 0)
        return x_new, g_new, H, k + 1

    H0 = jnp.eye(x0.size) / gamma
    return jax.lax.while_loop(cond, body, (x0, g(x0, *params), H0, 0))[0]


def bisection(F, lower, upper, *params, iters=200):
    """Root of a decreasing scalar `F(τ)` in `[lower, upper]` by bisection."""

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        positive = F(mid, *params) > 0
        return jnp.where(positive, mid, lo), jnp.where(positive, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lower, upper))
    return 0.5 * (lo + hi)


def least_squares(w, data):
    """jaxopt's `objective.least_squares`: ‖Xw - y‖² / (2n)."""
    X, y = data
    return 0.5 * jnp.mean((X @ w - y) ** 2)


def _lipschitz_step(X):
    return float(len(X) / jnp.linalg.eigvalsh(X.T @ X)[-1])


def _affine_contraction(n):
    """jaxopt's random symmetric affine contraction `x -> M x + b` (key 0)."""
    key, subkey = jax.random.split(jax.random.PRNGKey(0))
    M = jax.random.uniform(subkey, (n, n), minval=-1.0, maxval=1.0)
    M = M + M.T
    M = M / (2 * jnp.abs(jnp.linalg.eigvalsh(M)[-1]) + 1e-4)
    b = jax.random.uniform(jax.random.split(key)[1], (n,))
    return M, b


# ---------------------------------------------------------------------------------
# Fixed-point iteration, Anderson acceleration, Broyden: jaxopt's three gradient
# situations (`test_simple_grads`, `test_grads_flat_landscape`,
# `test_affine_contractive_mapping`).
# ---------------------------------------------------------------------------------

DOTTIE = 0.7390851332151607  # x = cos x


def _fp_solver(method):
    """A fixed-point solver `solve(init, *params)` of `T` by `method`, decorated."""

    def decorate(T):
        if method == "fixed_point_iteration":
            return custom_fixed_point(T)(
                lambda x0, *p: fixed_point_iteration(T, x0, *p)
            )
        if method == "anderson":
            return custom_fixed_point(T)(lambda x0, *p: anderson(T, x0, *p))
        g = lambda x, *p: T(x, *p) - x  # Broyden solves the root form
        return custom_root(conditions.OptimalityCondition(g))(
            lambda x0, *p: broyden(g, x0, *p)
        )

    return decorate


METHODS = ["fixed_point_iteration", "anderson", "broyden"]
SLOW = pytest.mark.slow


def _cheap(*fast):
    """`METHODS` with those not in `fast` marked slow (the default run's budget)."""
    return [m if m in fast else pytest.param(m, marks=SLOW) for m in METHODS]


@SLOW
@pytest.mark.parametrize("method", METHODS)
def test_cos_fixed_point_gradient(method):
    """x* = cos x* + θ, θ = (0, π/2): x* = (Dottie number, π/2) and, from
    x* - cos x* = θ, dx*/dθ = 1 / (1 + sin x*) (diagonal)."""
    T = lambda x, theta: jnp.cos(x) + theta
    solve = _fp_solver(method)(T)
    x0 = jnp.array([0.0, jnp.pi / 4 if method != "anderson" else jnp.pi / 2])
    theta = jnp.array([0.0, jnp.pi / 2])
    x = jax.jit(solve)(x0, theta)
    jac = jax.jit(jax.jacrev(solve, argnums=1))(x0, theta)
    # The implicit function theorem at the returned point, to round-off.
    assert jnp.allclose(jac, jnp.diag(1 / (1 + jnp.sin(x))), rtol=1e-9, atol=0)
    # And the true derivative, up to the forward solve's error. Plain fixed-point
    # iteration converges sublinearly at π/2 (T' = -1 there), as in jaxopt's test.
    loose = 1e-3 if method == "fixed_point_iteration" else 1e-9
    want = jnp.diag(1 / (1 + jnp.sin(jnp.array([DOTTIE, jnp.pi / 2]))))
    assert jnp.allclose(jac, want, rtol=loose, atol=loose)
    # forward mode agrees
    jac_fwd = jax.jit(jax.jacfwd(solve, argnums=1))(x0, theta)
    assert jnp.allclose(jac_fwd, jac, rtol=1e-9)


@pytest.mark.parametrize("method", _cheap())
def test_flat_landscape_gradient(method):
    """T(x, θ) = θ x with |θ| < 1 (jaxopt: with an auxiliary output x): x* = 0 for
    every θ, so dx*/dθ = 0 although ∂T/∂θ = x is not identically zero; finite
    differences of the solve agree (jaxopt's check). The same map shifted,
    θ x + c, has x* = c / (1 - θ) and dx*/dθ = c / (1 - θ)² (diagonal)."""
    T_aux = lambda x, theta, c: (theta * x + c, x)
    condition = conditions.fixed_point(T_aux, has_aux=True)
    T = lambda x, theta, c: T_aux(x, theta, c)[0]
    forward = {
        "fixed_point_iteration": lambda x0, t, c: fixed_point_iteration(T, x0, t, c),
        "anderson": lambda x0, t, c: anderson(T, x0, t, c),
        "broyden": lambda x0, t, c: broyden(condition, x0, t, c),
    }[method]
    solve = jax.jit(custom_root(condition)(forward))
    jacobian = jax.jit(jax.jacrev(solve, argnums=1))
    x0 = jnp.array([1.0, -0.5])
    theta = jnp.array([0.05, 0.2])
    for c in [0.0, 1.0]:
        assert jnp.allclose(solve(x0, theta, c), c / (1 - theta), atol=1e-11)
        jac = jacobian(x0, theta, c)
        assert jnp.allclose(jac, jnp.diag(c / (1 - theta) ** 2), rtol=1e-9, atol=1e-9)
    eps = 1e-4
    fd = jnp.stack(
        [
            (solve(x0, theta + eps * e, 0.0) - solve(x0, theta - eps * e, 0.0))
            / (2 * eps)
            for e in jnp.eye(2)
        ],
        axis=1,
    )
    assert jnp.allclose(jacobian(x0, theta, 0.0), fd, atol=1e-6)


def _affine_case(method, n):
    M, b = _affine_contraction(n)
    solve = _fp_solver(method)(lambda x, M, b: M @ x + b)
    x0 = jnp.zeros(n)
    x = jax.jit(solve)(x0, M, b)
    want_x = jnp.linalg.solve(jnp.eye(n) - M, b)
    assert jnp.allclose(x, want_x, rtol=1e-9, atol=1e-9)
    # loss vᵀx*: with u = (I - M)⁻ᵀ v, d/db = u and d/dM = u x*ᵀ
    v = jax.random.normal(jax.random.PRNGKey(1), (n,))
    gM, gb = jax.jit(jax.grad(lambda M, b: v @ solve(x0, M, b), argnums=(0, 1)))(M, b)
    u = jnp.linalg.solve((jnp.eye(n) - M).T, v)
    assert jnp.allclose(gb, u, rtol=1e-8, atol=1e-10)
    assert jnp.allclose(gM, jnp.outer(u, want_x), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", _cheap("broyden"))
def test_affine_contractive_mapping_gradient(method):
    """x* = M x* + b, jaxopt's random symmetric contraction, n = 20 here."""
    _affine_case(method, 20)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_affine_contractive_mapping_gradient_n200(method):
    """The same at jaxopt's size, n = 200."""
    _affine_case(method, 200)


# ---------------------------------------------------------------------------------
# Bisection: the threshold of the projection onto the simplex (jaxopt's
# `bisection_test.py`).
# ---------------------------------------------------------------------------------


def _simplex_condition(tau, x, s):
    """Σ max(x - τ, 0) - s, decreasing in τ; its root is the simplex threshold."""
    return jnp.sum(jnp.maximum(x - tau, 0.0)) - s


@custom_root(conditions.OptimalityCondition(_simplex_condition))
def _threshold(init, x, s=1.0):
    upper = jnp.max(x)  # every x_i - τ <= 0: F = -s
    lower = jnp.min(x) - s / len(x)  # F >= 0
    return bisection(_simplex_condition, lower, upper, x, s)


def _project_simplex_by_bisection(x, s=1.0):
    return jnp.maximum(x - _threshold(None, x, s), 0.0)


def test_bisection_simplex_projection_jacobian():
    """jaxopt's `test_bisect`: 10 draws of x ∈ R⁵⁰ (RandomState(0)). The Jacobian of
    the projection p = max(x - τ*(x), 0) is, on the support S of p, I - 11ᵀ/|S|
    (zero elsewhere); jit gives the same."""
    rng = np.random.RandomState(0)
    project = jax.jit(_project_simplex_by_bisection)
    jacobian = jax.jit(jax.jacrev(_project_simplex_by_bisection))
    for _ in range(10):
        x = jnp.asarray(rng.randn(50))
        p = project(x)
        assert jnp.allclose(p.sum(), 1.0, atol=1e-12) and jnp.all(p >= 0)
        S = (p > 0).astype(x.dtype)
        want = jnp.diag(S) - jnp.outer(S, S) / S.sum()
        assert jnp.allclose(jacobian(x), want, atol=1e-12)


@SLOW
def test_bisection_grad_of_value_and_grad():
    """jaxopt issue #141: `grad` of the value of a `value_and_grad` equals `grad`."""
    x = jnp.asarray(np.random.RandomState(0).randn(5))
    first = lambda x: _project_simplex_by_bisection(x)[0]
    value = lambda x: jax.value_and_grad(first)(x)[0]
    assert jnp.allclose(jax.grad(value)(x), jax.grad(first)(x), atol=1e-14)
    # the threshold's own derivative: dτ*/dx = 1_S / |S|
    S = (_project_simplex_by_bisection(x) > 0).astype(x.dtype)
    assert jnp.allclose(jax.grad(lambda x: _threshold(None, x))(x), S / S.sum())


# ---------------------------------------------------------------------------------
# Equality-constrained QP (jaxopt's `eq_qp_test.py`): min ½ yᵀQy + cᵀy, Ay = b.
# ---------------------------------------------------------------------------------


def _qp_objective(y, params_obj, params_eq):
    Q, c = params_obj
    return 0.5 * y @ (0.5 * (Q + Q.T)) @ y + c @ y


def _qp_eq(y, params_obj, params_eq):
    A, b = params_eq
    return A @ y - b


def _kkt_direct(params_obj, params_eq):
    """[[Q, Aᵀ], [A, 0]] [y; λ] = [-c; b] solved directly."""
    (Q, c), (A, b) = params_obj, params_eq
    n, m = len(c), len(b)
    K = jnp.block([[0.5 * (Q + Q.T), A.T], [A, jnp.zeros((m, m))]])
    z = jnp.linalg.solve(K, jnp.concatenate([-c, b]))
    return z[:n], {"eq": z[n:]}


@custom_root(conditions.kkt(_qp_objective, eq=_qp_eq))
def _eq_qp(init_params=None, params_obj=None, params_eq=None):
    return _kkt_direct(params_obj, params_eq)


QP_DOC = (  # jaxopt's `test_qp_eq_only` / `test_qp_eq_with_init`
    2 * jnp.array([[2.0, 0.5], [0.5, 1.0]]),
    jnp.array([1.0, 1.0]),
    jnp.array([[1.0, 1.0]]),
    jnp.array([1.0]),
)
QP_EXAMPLE = (  # jaxopt's `test_example_from_doc` (quadratic_problems.rst)
    jnp.array([[1.0, 0.5], [0.5, 4.0]]),
    jnp.zeros(2),
    jnp.array([[1.0, 2.0]]),
    jnp.array([1.0]),
)


@pytest.mark.parametrize(
    "data, with_init",
    [
        (QP_EXAMPLE, False),
        pytest.param(QP_DOC, False, marks=SLOW),
        pytest.param(QP_DOC, True, marks=SLOW),
    ],
    ids=["doc", "eq_only", "eq_only_with_init"],
)
def test_eq_qp_gradients(data, with_init):
    """d Σ y*/d(Q, c, A, b): plain autodiff through the direct KKT solve, and
    jaxopt's check (central differences along random unit directions, eps 1e-4)."""
    init = (jnp.ones(2), {"eq": jnp.ones(1)}) if with_init else None

    @jax.jit
    def fun(Q, c, A, b):
        return jnp.sum(_eq_qp(init, params_obj=(Q, c), params_eq=(A, b))[0])

    def reference(Q, c, A, b):
        return jnp.sum(_kkt_direct((Q, c), (A, b))[0])

    grads = jax.jit(jax.grad(fun, argnums=(0, 1, 2, 3)))(*data)
    want = jax.grad(reference, argnums=(0, 1, 2, 3))(*data)
    rng = np.random.RandomState(0)
    for i, (g, w) in enumerate(zip(grads, want, strict=True)):
        assert jnp.allclose(g, w, rtol=1e-10, atol=1e-12)
        V = rng.rand(*data[i].shape)
        V /= np.sqrt(np.sum(V**2))
        plus = list(data)
        minus = list(data)
        plus[i], minus[i] = data[i] + 1e-4 * V, data[i] - 1e-4 * V
        fd = (fun(*plus) - fun(*minus)) / 2e-4
        assert jnp.allclose(jnp.vdot(V, g), fd, atol=1e-7)


@SLOW
def test_eq_qp_pytree_parameters():
    """jaxopt's `test_fun_api`: objective Σ(x - y)² with x inside a dict, constraint
    a·y = b: the projection of x onto a hyperplane,
    y* = x - (a·x - b) a / ‖a‖². Gradients of Σ y* with respect to the dict, a and b
    against autodiff of that formula."""
    cost = lambda y, params_obj, params_eq: jnp.sum(
        (params_obj["complicated_pytree"] - y) ** 2
    )
    eq = lambda y, params_obj, params_eq: jnp.reshape(
        params_eq[0] @ y - params_eq[1], (1,)
    )

    @custom_root(conditions.kkt(cost, eq=eq))
    def solve(init_params, params_obj, params_eq):
        # Newton on the quadratic KKT system from the given initial point.
        y0, lam0 = init_params
        K = jax.jacfwd(lambda z: _flat_kkt(cost, eq, z, params_obj, params_eq))(
            jnp.concatenate([y0, lam0["eq"]])
        )
        z0 = jnp.concatenate([y0, lam0["eq"]])
        z = z0 - jnp.linalg.solve(K, _flat_kkt(cost, eq, z0, params_obj, params_eq))
        return z[:2], {"eq": z[2:]}

    def closed_form(x, a, b):
        return jnp.sum(x - (a @ x - b) * a / (a @ a))

    x = {"complicated_pytree": jnp.array([1.0, 2.0])}
    a, b = jnp.array([-0.5, 1.5]), jnp.array(0.3)
    init = (jnp.array([1.0, 1.0]), {"eq": jnp.array([1.0])})
    fun = lambda x, a, b: jnp.sum(solve(init, x, (a, b))[0])
    value, grads = jax.value_and_grad(fun, argnums=(0, 1, 2))(x, a, b)
    want_value, want = jax.value_and_grad(closed_form, argnums=(0, 1, 2))(
        x["complicated_pytree"], a, b
    )
    assert jnp.allclose(value, want_value, rtol=1e-12)
    assert jnp.allclose(grads[0]["complicated_pytree"], want[0], rtol=1e-10)
    assert jnp.allclose(grads[1], want[1], rtol=1e-10)
    assert jnp.allclose(grads[2], want[2], rtol=1e-10)


def _flat_kkt(cost, eq, z, params_obj, params_eq):
    grad, out = conditions.kkt(cost, eq=eq)(
        (z[:2], {"eq": z[2:]}), params_obj, params_eq
    )
    return jnp.concatenate([grad, out["eq"]])


# ---------------------------------------------------------------------------------
# Projected gradient (`test_projected_gradient_implicit_diff`) and proximal
# gradient (`test_lasso_implicit_diff(_with_kwargs)`).
# ---------------------------------------------------------------------------------


def _l2_ball(v, radius):
    return v * radius / jnp.maximum(jnp.linalg.norm(v), radius)


@SLOW
def test_projected_gradient_l2_ball_radius():
    """Least squares on the ball ‖w‖ <= r, r = 0.1 (X ∈ R^{10×5}, RandomState(0)),
    the radius passed as `hyperparams_proj=` and the data as `data=`. The ball is
    active: from (H + μI) w = Xᵀy/n, ‖w‖ = r (H = XᵀX/n),
    dw/dr = r (H + μI)⁻¹w / (wᵀ(H + μI)⁻¹w); central differences agree."""
    rng = np.random.RandomState(0)
    X = jnp.asarray(rng.randn(10, 5))
    y = X @ jnp.asarray(rng.rand(5))
    eta = _lipschitz_step(X)
    condition = conditions.projected_gradient(least_squares, _l2_ball, eta)

    @custom_root(condition)
    def projected_gradient(init_params, hyperparams_proj, data):
        step = lambda w: _l2_ball(
            w - eta * jax.grad(least_squares)(w, data), hyperparams_proj
        )
        return fixed_point_iteration(lambda w: step(w), init_params, maxiter=20_000)

    solution = jax.jit(
        lambda r: projected_gradient(jnp.zeros(5), hyperparams_proj=r, data=(X, y))
    )
    w = solution(0.1)
    assert jnp.allclose(jnp.linalg.norm(w), 0.1, rtol=1e-12)
    H = X.T @ X / len(y)
    mu = -w @ jax.grad(least_squares)(w, (X, y)) / 0.1**2
    assert mu > 0
    q = jnp.linalg.solve(H + mu * jnp.eye(5), w)
    want = 0.1 * q / (w @ q)
    J = jax.jit(jax.jacobian(solution))(0.1)
    assert jnp.allclose(J, want, rtol=1e-8, atol=1e-12)
    fd = (solution(0.1 + 1e-4) - solution(0.1 - 1e-4)) / 2e-4
    assert jnp.allclose(J, fd, atol=1e-6)


def _soft_threshold(v, lam, scaling=1.0):
    """jaxopt's `prox.prox_lasso`."""
    return jnp.sign(v) * jnp.maximum(jnp.abs(v) - lam * scaling, 0.0)


def _sklearn_lasso(X, y, lam):
    model = linear_model.Lasso(alpha=lam, fit_intercept=False, tol=1e-5)
    return jnp.asarray(model.fit(np.asarray(X), np.asarray(y)).coef_)


@SLOW  # the default run has a Lasso case in test_jaxopt_calls.py
@pytest.mark.parametrize("call", ["positional", "keywords"])
def test_proximal_gradient_lasso_jacobian(call):
    """Lasso ‖Xw - y‖²/(2n) + λ‖w‖₁ on make_regression(10, 3, random_state=0),
    λ = 10, warm-started at scikit-learn's solution (jaxopt's test). On the support
    S, X_Sᵀ(X_S w_S - y)/n + λ sign(w_S) = 0 gives dw_S/dλ = -(X_SᵀX_S/n)⁻¹ sign(w_S),
    zero off S; scikit-learn's central differences (jaxopt's expected value) agree
    to their accuracy."""
    X, y = (jnp.asarray(a) for a in datasets.make_regression(10, 3, random_state=0))
    lam, data = 10.0, (X, y)
    eta = _lipschitz_step(X)

    @custom_root(conditions.prox_gradient(least_squares, _soft_threshold, eta))
    def ista(init_params, hyperparams_prox, data):
        step = lambda w: _soft_threshold(
            w - eta * jax.grad(least_squares)(w, data), hyperparams_prox, eta
        )
        return fixed_point_iteration(step, init_params, maxiter=20_000)

    w_skl = _sklearn_lasso(X, y, lam)
    if call == "positional":
        wrapper = lambda lam: ista(w_skl, lam, data)
    else:
        wrapper = lambda lam: ista(w_skl, hyperparams_prox=lam, data=data)
    w = jax.jit(wrapper)(lam)
    S = w != 0
    assert jnp.any(S)
    XS = X[:, S]
    want = jnp.zeros(3).at[S].set(-jnp.linalg.solve(XS.T @ XS / len(y), jnp.sign(w[S])))
    jac = jax.jit(jax.jacrev(wrapper))(lam)
    assert jnp.allclose(jac, want, rtol=1e-9, atol=1e-12)
    fd_skl = (
        _sklearn_lasso(X, y, lam + 1e-4) - _sklearn_lasso(X, y, lam - 1e-4)
    ) / 2e-4
    assert jnp.allclose(jac, fd_skl, atol=1e-3)


# ---------------------------------------------------------------------------------
# jaxopt's `implicit_diff_test.test_custom_fixed_point`: ridge regression as the
# fixed point of one gradient step, the parameters passed by keyword.
# ---------------------------------------------------------------------------------


@SLOW
def test_custom_fixed_point_ridge_with_keywords():
    X, y = (jnp.asarray(a) for a in datasets.make_regression(10, 3, random_state=0))
    lam = 5.0

    def ridge_objective(params, lam, X, y):
        return 0.5 * jnp.mean((X @ params - y) ** 2) + 0.5 * lam * jnp.sum(params**2)

    def ridge_solver(init_params, lam, X, y):
        del init_params
        n = len(y)
        return jnp.linalg.solve(X.T @ X + lam * n * jnp.eye(X.shape[1]), X.T @ y)

    grad = jax.grad(ridge_objective)
    solve = custom_fixed_point(lambda w, *args: w - grad(w, *args))(ridge_solver)
    w = ridge_solver(None, lam, X, y)
    assert jnp.allclose(solve(None, lam=lam, X=X, y=y), w, rtol=1e-12)
    # dw/dlam = -(XᵀX + lam n I)⁻¹ n w
    want = -jnp.linalg.solve(X.T @ X + lam * 10 * jnp.eye(3), 10 * w)
    J = jax.jacrev(solve, argnums=1)(None, lam, X=X, y=y)
    assert jnp.allclose(J, want, rtol=1e-9)
    # keywords out of order, under jit (jaxopt's `..._kwargs_unordered` cases)
    g = jax.jit(jax.grad(lambda lam: solve(None, X=X, lam=lam, y=y)[0]))(lam)
    assert jnp.allclose(g, want[0], rtol=1e-9)
