"""`ProximalGradient` and support-restricted hypergradients of Lasso-type lower
levels (acceptance: equal to central finite differences, rel. 1e-6, float64)."""

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
import numpy as np
import optax
import pytest
from sklearn.linear_model import ElasticNet, Lasso

import bilevax as bx

N_TRAIN, N_VAL, P = 30, 20, 12


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N_TRAIN + N_VAL, P))
    w = np.zeros(P)
    w[:3] = [2.0, -1.5, 1.0]
    t = X @ w + 0.5 * rng.standard_normal(N_TRAIN + N_VAL)
    X, t = jnp.asarray(X), jnp.asarray(t)
    return (X[:N_TRAIN], t[:N_TRAIN]), (X[N_TRAIN:], t[N_TRAIN:])


def _smooth(x, w, batch):  # scikit-learn's 1/(2n)‖t - Xw‖²
    X, t = batch
    return 0.5 * jnp.mean((t - X @ w.reshape(-1)) ** 2)


def _held_out(x, w, batch):
    X, t = batch
    return jnp.mean((t - X @ w.reshape(-1)) ** 2)


PROBLEM = bx.bilevel.BilevelProblem(outer=_held_out, inner=_smooth)

# (prox, θ(x), shape of w, x): Lasso, elastic net (l1_ratio 0.5), group Lasso
# (groups of 3 coefficients), weighted Lasso (one log α per feature).
CASES = {
    "lasso": (bx.prox.l1, jnp.exp, (P,), jnp.log(0.1)),
    "elastic_net": (
        bx.prox.elastic_net,
        lambda x: (0.5 * jnp.exp(x), 0.5 * jnp.exp(x)),
        (P,),
        jnp.log(0.1),
    ),
    "group_lasso": (bx.prox.group_l1, jnp.exp, (P // 3, 3), jnp.log(0.2)),
    "weighted_lasso": (
        bx.prox.l1,
        jnp.exp,
        (P,),
        jnp.log(jnp.linspace(0.05, 0.3, P)),
    ),
}


_jit_hypergradient = eqx.filter_jit(bx.bilevel.hypergradient)


def _hypergradient(case, x, **kwargs):
    prox, params, shape, _ = CASES[case]
    inner = bx.bilevel.ProximalGradient(prox, params, num_steps=20000, **kwargs)
    return _jit_hypergradient(
        PROBLEM, x, jnp.zeros(shape), inner, data=_data(), tol=1e-13
    )


@pytest.mark.parametrize(
    "case",
    ["lasso", *(pytest.param(c, marks=pytest.mark.slow) for c in list(CASES)[1:])],
)
def test_hypergradient_equals_central_differences(case):
    x = jnp.asarray(CASES[case][3], jnp.float64)
    _, grad, w, stats = _hypergradient(case, x)
    assert stats.linear_result == lx.RESULTS.successful and stats.inner_residual < 1e-10
    support = w != 0
    assert 0 < support.sum() < support.size  # the restriction does something
    h = 1e-5
    for i in range(x.size):
        e = jnp.zeros_like(x).reshape(-1).at[i].set(h).reshape(x.shape)
        up, _, w_up, _ = _hypergradient(case, x + e)
        down, _, w_down, _ = _hypergradient(case, x - e)
        assert jnp.array_equal(w_up != 0, support)  # locally constant support
        assert jnp.array_equal(w_down != 0, support)
        fd = (up - down) / (2 * h)
        # rel. 1e-6, above the differences' rounding floor ε·F/h ≈ 1e-11
        assert jnp.abs(grad.reshape(-1)[i] - fd) <= 1e-6 * jnp.abs(fd) + 1e-10


@pytest.mark.slow
def test_large_support_fallback_gives_the_same_hypergradient():
    x = jnp.asarray(jnp.log(0.01), jnp.float64)  # small α: a full support
    support = bx.implicit.SupportAdjoint(max_support=2)
    _, dense, w, _ = _hypergradient("lasso", x)
    _, fallback, _, stats = _hypergradient("lasso", x, support=support)
    assert (w != 0).sum() > 2 and stats.linear_steps > 0
    assert jnp.allclose(dense, fallback, rtol=1e-8)


@pytest.mark.parametrize(
    "case", ["lasso", pytest.param("elastic_net", marks=pytest.mark.slow)]
)
def test_fista_matches_scikit_learn(case):
    (X, t), _ = _data()
    alpha = 0.1
    prox, params, _, _ = CASES[case]
    model = Lasso(alpha) if case == "lasso" else ElasticNet(alpha, l1_ratio=0.5)
    model.set_params(fit_intercept=False, tol=1e-12, max_iter=100000).fit(X, t)
    inner = bx.bilevel.ProximalGradient(prox, params, num_steps=20000)
    g = lambda x, w: _smooth(x, w, (X, t))
    w, steps = inner.solve(g, jnp.zeros(P), jnp.log(alpha), 1e-12)
    assert steps < 20000
    np.testing.assert_allclose(w, model.coef_, atol=1e-9)


def test_backtracking_recovers_from_a_too_long_first_step():
    (X, t), _ = _data()
    g = lambda x, w: _smooth(x, w, (X, t))
    inner = bx.bilevel.ProximalGradient(bx.prox.l1, jnp.exp, stepsize=100.0)
    w, _ = inner.solve(g, jnp.zeros(P), jnp.log(0.1), 1e-10)
    assert inner.gradient_mapping_norm(g, jnp.log(0.1), w, 0.1) < 1e-8


@pytest.mark.slow
def test_unrolled_proximal_gradient_approaches_the_implicit_hypergradient():
    x = jnp.asarray(jnp.log(0.1), jnp.float64)
    _, implicit, _, _ = _hypergradient("lasso", x)
    inner = bx.bilevel.ProximalGradient(bx.prox.l1, jnp.exp, num_steps=3000)
    adjoint = bx.implicit.UnrolledAdjoint()
    _, unrolled, _, _ = bx.bilevel.hypergradient(
        PROBLEM, x, jnp.zeros(P), inner, adjoint, data=_data()
    )
    assert jnp.allclose(unrolled, implicit, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
    "algorithm",
    [bx.bilevel.HOAG(eps0=1e-4), bx.bilevel.HypergradientDescent(optax.adam(0.1))],
)
def test_algorithms_tune_the_lasso_strength(algorithm):
    algorithm = type(algorithm)(
        **{
            **vars(algorithm),
            "inner_solver": bx.bilevel.ProximalGradient(
                bx.prox.l1, jnp.exp, num_steps=5000
            ),
        }
    )
    data = _data()
    x0 = jnp.asarray(jnp.log(0.5), jnp.float64)
    result = algorithm.run(PROBLEM, x0, jnp.zeros(P), data=data, num_steps=60)
    assert result.result == bx.bilevel.RESULTS.successful
    grid = jnp.log(jnp.logspace(-3, 0, 60))
    losses = [_hypergradient("lasso", a)[0] for a in grid]
    assert result.history.outer_loss[-1] <= 1.01 * min(losses)
