"""`bilevax.sklearn`: the tuned α reaches the validation error of the best point
of `LassoCV`/`ElasticNetCV`'s 100-point grid (within 1%) on the same folds."""

import numpy as np
import pytest
from sklearn.linear_model import ElasticNetCV, LassoCV, LogisticRegression

import bilevax as bx


def _synthetic(n=50, p=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[:4] = [3.0, -2.0, 1.5, 1.0]
    return X, X @ w + rng.standard_normal(n) + 2.0


def _grid_best(reference):
    return reference.mse_path_.mean(axis=-1).min()


@pytest.mark.slow  # ~1 min of compilation; the doctests stay in the default run
def test_lasso_ho_matches_the_grid_and_scikit_learns_objective():
    X, y = _synthetic()
    reference = LassoCV(cv=3, tol=1e-10, max_iter=100_000).fit(X, y)
    model = bx.sklearn.LassoHO(cv=3).fit(X, y)
    assert model.validation_error_ <= 1.01 * _grid_best(reference)
    # the refit is scikit-learn's Lasso at the same α
    from sklearn.linear_model import Lasso

    lasso = Lasso(alpha=float(model.alpha_), tol=1e-12, max_iter=100_000).fit(X, y)
    np.testing.assert_allclose(model.coef_, lasso.coef_, atol=1e-6)
    np.testing.assert_allclose(model.intercept_, lasso.intercept_, atol=1e-6)


def test_bad_input_is_a_named_error():
    with pytest.raises(ValueError, match="fit"):
        bx.sklearn.LassoHO().fit(np.ones((5, 2)), np.ones(4))
    with pytest.raises(ValueError, match="cv"):
        bx.sklearn.LassoHO(cv=1).fit(np.ones((5, 2)), np.ones(5))
    with pytest.raises(ValueError, match="l1_ratio"):
        bx.sklearn.ElasticNetHO(l1_ratio=0.0)
    with pytest.raises(ValueError, match="`n_coarse` must be an int >= 2"):
        bx.sklearn.LassoHO(n_coarse=0)
    with pytest.raises(ValueError, match="`tol` must be > 0"):
        bx.sklearn.ElasticNetHO(tol=-1.0)
    with pytest.raises(ValueError, match="`cv` must be a number of folds or a list"):
        bx.sklearn.LassoHO(cv=[1, 2]).fit(np.ones((5, 2)), np.ones(5))


@pytest.mark.slow
def test_elastic_net_ho_matches_the_grid():
    X, y = _synthetic(seed=1)
    reference = ElasticNetCV(l1_ratio=0.5, cv=3, tol=1e-10, max_iter=100_000)
    reference.fit(X, y)
    model = bx.sklearn.ElasticNetHO(l1_ratio=0.5, cv=3).fit(X, y)
    assert model.validation_error_ <= 1.01 * _grid_best(reference)


@pytest.mark.slow
def test_diabetes_several_minima_are_reported_and_the_best_is_reached():
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    reference = LassoCV(cv=5, tol=1e-10, max_iter=100_000).fit(X, y)
    model = bx.sklearn.LassoHO(cv=5).fit(X, y)
    assert len(model.local_minima_) > 1  # the validation curve is not unimodal
    assert model.validation_error_ <= 1.01 * _grid_best(reference)


@pytest.mark.slow
def test_weighted_lasso_does_not_lose_to_the_scalar_one():
    X, y = _synthetic(seed=2)
    scalar = bx.sklearn.LassoHO(cv=3).fit(X, y)
    weighted = bx.sklearn.LassoHO(cv=3, weighted=True).fit(X, y)
    assert weighted.alpha_.shape == (X.shape[1],)
    assert weighted.validation_error_ <= scalar.validation_error_ * (1 + 1e-6)


@pytest.mark.parametrize(
    "l1_ratio, weighted",
    [
        (0.5, False),  # both cotangents (λ₁ and λ₂); the others compile again
        pytest.param(1.0, False, marks=pytest.mark.slow),
        pytest.param(1.0, True, marks=pytest.mark.slow),
    ],
)
def test_working_set_hypergradient_equals_finite_differences(l1_ratio, weighted):
    """The estimators' engine (working-set coordinate descent, support-restricted
    adjoint) against central differences of the CV error in `log α`."""
    import jax
    import jax.numpy as jnp

    from bilevax import sklearn as sk

    X, y = _synthetic(n=40, p=12, seed=3)
    estimator = bx.sklearn.LassoHO(cv=3, tol=1e-12)
    s, scale = estimator._setting(X, y, sk._folds(3, 40), jnp.float64)
    penalty = sk._Penalty(jnp.asarray(l1_ratio))
    rng = np.random.default_rng(0)
    x = np.log(0.1 * scale) + (0.3 * rng.standard_normal(12) if weighted else 0.0)
    W0 = jnp.zeros((3, 12))
    hyper = jax.jit(lambda x_: sk._hypergradient(penalty, x_, W0, s))
    value, grad, W, violation = hyper(jnp.asarray(x))
    assert float(violation) <= 1e-10
    assert 2 <= int(jnp.sum(W[0] != 0)) < 12  # a nontrivial support
    h = 1e-5
    basis = np.eye(12) if weighted else np.ones((1, 1))
    for e, g in zip(basis, np.atleast_1d(grad), strict=True):
        e = e if weighted else 1.0
        fd = (hyper(jnp.asarray(x + h * e))[0] - hyper(jnp.asarray(x - h * e))[0]) / (
            2 * h
        )
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9 * abs(float(value)))


@pytest.mark.slow
def test_high_dimensional_synthetic_reaches_the_grid():
    """Acceptance 2 on the gene-expression-shaped problem (38 × 7129, 5-sparse)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((38, 7129))
    w = np.zeros(7129)
    w[rng.choice(7129, 5, replace=False)] = rng.choice([-2.0, 2.0], 5)
    y = X @ w + 0.5 * rng.standard_normal(38)
    reference = LassoCV(cv=5).fit(X, y)
    model = bx.sklearn.LassoHO(cv=5).fit(X, y)
    assert model.validation_error_ <= 1.01 * _grid_best(reference)


def _classification(n=60, p=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    z = 1.5 * X[:, 0] - X[:, 1] + 0.5 * X[:, 2] + 0.3
    return X, (z + rng.standard_normal(n) > 0).astype(int)


def _liblinear(C, X, y):
    """scikit-learn's L1 logistic regression at `C`, solved tightly (the intercept
    scaled up so that liblinear's penalty on it is negligible)."""
    return LogisticRegression(
        C=C,
        l1_ratio=1.0,
        solver="liblinear",
        tol=1e-12,
        max_iter=1_000_000,
        intercept_scaling=1e6,
    ).fit(X, y)


def test_sparse_logistic_hypergradient_equals_finite_differences():
    """Proximal Newton + support-restricted adjoint against central differences of
    the held-out log-loss in `log C`."""
    import jax
    import jax.numpy as jnp

    from bilevax import sklearn as sk

    X, y = _classification()
    t = np.where(y == 1, 1.0, -1.0)
    estimator = bx.sklearn.SparseLogisticHO(cv=3, tol=1e-12)
    s, scale = estimator._setting(X, t, sk._folds(3, 60), jnp.float64)
    x = np.log(5.0 / (60 * scale))  # 5 C_min: a nontrivial support
    W0 = jnp.zeros((3, 9))
    hyper = jax.jit(lambda x_: sk._LogisticL1().hypergradient(x_, W0, s))
    value, grad, W, violation = hyper(jnp.asarray(x))
    assert float(violation) <= 1e-12
    assert all(2 <= int(jnp.sum(w[:-1] != 0)) < 8 for w in W)
    h = 1e-5
    fd = (hyper(jnp.asarray(x + h))[0] - hyper(jnp.asarray(x - h))[0]) / (2 * h)
    assert abs(float(grad)) > 1e-3  # not a flat point
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_sparse_logistic_solve_is_scikit_learns_objective():
    """At a fixed `C`, the inner solve is `LogisticRegression(l1_ratio=1)`'s
    solution (liblinear with a huge `intercept_scaling`, so that its intercept is
    unpenalised, as ours and saga's)."""
    import jax.numpy as jnp

    from bilevax import sklearn as sk

    X, y = _classification(n=80, seed=1)
    C = 0.2
    reference = _liblinear(C, X, y)
    t = np.where(y == 1, 1.0, -1.0)
    s, _ = bx.sklearn.SparseLogisticHO(tol=1e-12)._setting(
        X, t, [(np.arange(80), np.arange(80))], jnp.float64
    )
    W, violation = sk._solve_logistic(jnp.log(C), jnp.zeros((1, 9)), s)
    assert float(violation) <= 1e-10
    assert 0 < int(jnp.sum(W[0, :-1] == 0))  # some coefficients are exactly zero
    np.testing.assert_allclose(W[0, :-1], reference.coef_[0], atol=1e-5)
    np.testing.assert_allclose(W[0, -1], reference.intercept_[0], atol=1e-5)


def test_sparse_logistic_bad_input_is_a_named_error():
    X, y = _classification(n=10)
    with pytest.raises(ValueError, match="exactly two labels"):
        bx.sklearn.SparseLogisticHO(cv=2).fit(X, np.arange(10) % 3)
    with pytest.raises(ValueError, match="fit"):
        bx.sklearn.SparseLogisticHO(cv=2).fit(X, y[:-1])
    with pytest.raises(ValueError, match="NaN"):
        bx.sklearn.SparseLogisticHO(cv=2).fit(np.full_like(X, np.nan), y)
    with pytest.raises(ValueError, match="`cv` must be an int"):
        bx.sklearn.SparseLogisticHO(cv=11).fit(X, y)
    with pytest.raises(ValueError, match="`max_iter` must be an int >= 1"):
        bx.sklearn.SparseLogisticHO(max_iter=0)
    with pytest.raises(ValueError, match="`coarse_tol` must be > 0"):
        bx.sklearn.SparseLogisticHO(coarse_tol=0.0)


@pytest.mark.slow
def test_breast_cancer_sparse_logistic_reaches_the_grid():
    """Acceptance 2 on breast_cancer (standardised): the held-out log-loss at `C_`
    is within 1% of the best of `LogisticRegressionCV`'s 100-point grid
    (`logspace(-4, 4, 100)`) of the same objective, solved tightly; the refit is
    scikit-learn's solution at `C_`."""
    import jax.numpy as jnp
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import StratifiedKFold

    from bilevax import sklearn as sk

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    folds = list(StratifiedKFold(5).split(X, y))
    model = bx.sklearn.SparseLogisticHO(cv=folds).fit(X, y)
    t = np.where(y == 1, 1.0, -1.0)
    s, _ = bx.sklearn.SparseLogisticHO(tol=1e-10)._setting(X, t, folds, jnp.float64)
    Cs = jnp.log(jnp.logspace(-4, 4, 100))
    k, errors, _, violation = sk._grid(sk._LogisticL1(), Cs, jnp.zeros((5, 31)), s)
    assert int(k) == 100 and float(violation) <= 1e-8
    assert model.validation_error_ <= 1.01 * float(jnp.min(errors))
    reference = _liblinear(float(model.C_[0]), X, y)
    # the refit is solved to the default `tol` (1e-6, relative); tight solves are
    # compared in test_sparse_logistic_solve_is_scikit_learns_objective
    np.testing.assert_allclose(model.coef_, reference.coef_, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["diabetes", "synthetic"])
def test_elastic_net_ho_reaches_the_grid_on_the_example_datasets(dataset):
    """Acceptance 2 for `ElasticNetHO` on the example's regression datasets
    (`LassoHO`'s are the diabetes and high-dimensional tests above)."""
    from sklearn.datasets import load_diabetes

    if dataset == "diabetes":
        X, y = load_diabetes(return_X_y=True)
    else:
        rng = np.random.default_rng(0)
        X = rng.standard_normal((38, 7129))
        w = np.zeros(7129)
        w[rng.choice(7129, 5, replace=False)] = rng.choice([-2.0, 2.0], 5)
        y = X @ w + 0.5 * rng.standard_normal(38)
    tight = dict(tol=1e-8, max_iter=100_000) if dataset == "diabetes" else {}
    reference = ElasticNetCV(l1_ratio=0.5, cv=5, **tight).fit(X, y)
    model = bx.sklearn.ElasticNetHO(l1_ratio=0.5, cv=5).fit(X, y)
    assert len(model.local_minima_) >= 1
    assert model.validation_error_ <= 1.01 * _grid_best(reference)
