"""Tune the strength of L1-type penalties by hypergradients: `bx.sklearn.LassoHO`,
`ElasticNetHO` and `SparseLogisticHO` against scikit-learn's `LassoCV` /
`ElasticNetCV` / `LogisticRegressionCV` on the same folds and the same objective.

Datasets: diabetes (bundled with scikit-learn; its validation curve has several
local minima in α) and a synthetic problem shaped like the gene-expression one of
Bertrand et al. (2020): n = 38, p = 7129, a 5-sparse truth plus noise; and, for
classification, L1-penalised logistic regression on breast_cancer (bundled,
standardised on the training rows; 5 stratified folds). For each: the chosen α
(or C), the cross-validation error (the mean over folds of the held-out MSE,
`LassoCV`'s criterion; the held-out log-loss for the classifier,
`LogisticRegressionCV(scoring="neg_log_loss")`'s), the error (and accuracy) on a
held-out test set, and the wall time (bilevax's first fit compiles; the second,
timed separately, reuses it). Saves a plot of the validation error against α and
C: the grid's curve and the hypergradient path on it.

    PYTHONPATH=$PWD python examples/sparse_regularisation.py --out docs/images
"""

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_diabetes  # noqa: E402
from sklearn.linear_model import (  # noqa: E402
    ElasticNetCV,
    LassoCV,
    LogisticRegressionCV,
)
from sklearn.metrics import log_loss  # noqa: E402
from sklearn.model_selection import StratifiedKFold, train_test_split  # noqa: E402

import bilevax as bx  # noqa: E402


def synthetic(n=38, p=7129, k=5, noise=0.5, seed=0):
    """`n × p` Gaussian design, a `k`-sparse truth, Gaussian noise (n test rows
    more, for the test error)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((2 * n, p))
    w = np.zeros(p)
    w[rng.choice(p, k, replace=False)] = rng.choice([-1.0, 1.0], k) * 2.0
    y = X @ w + noise * rng.standard_normal(2 * n)
    return X[:n], X[n:], y[:n], y[n:]


def diabetes(seed=0):
    X, y = load_diabetes(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=seed)


def breast_cancer(seed=0):
    X, y = load_breast_cancer(return_X_y=True)
    X, Xt, y, yt = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = X.mean(0), X.std(0)
    return (X - mean) / std, (Xt - mean) / std, y, yt


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(name, X, Xt, y, yt, l1_ratio, cv):
    """One row per method: α, CV error, test MSE, seconds."""
    if l1_ratio is None:
        reference = LassoCV(cv=cv, tol=1e-8, max_iter=100_000)
        estimator = bx.sklearn.LassoHO(cv=cv)
    else:
        reference = ElasticNetCV(l1_ratio=l1_ratio, cv=cv, tol=1e-8, max_iter=100_000)
        estimator = bx.sklearn.ElasticNetHO(l1_ratio=l1_ratio, cv=cv)
    _, t_ref = timed(lambda: reference.fit(X, y))
    _, t_cold = timed(lambda: estimator.fit(X, y))
    model, t_warm = timed(lambda: estimator.fit(X, y))
    test = lambda pred: float(np.mean((yt - pred) ** 2))
    grid_error = reference.mse_path_.mean(axis=-1).min()
    rows = [
        (
            type(reference).__name__,
            reference.alpha_,
            grid_error,
            test(reference.predict(Xt)),
            t_ref,
        ),
        (
            f"{type(estimator).__name__} (compiled)",
            float(model.alpha_),
            model.validation_error_,
            test(model.predict(Xt)),
            t_warm,
        ),
    ]
    print(f"\n{name}  (n={X.shape[0]}, p={X.shape[1]}, {cv} folds)")
    print(
        f"{'method':28s} {'alpha':>10s} {'cv error':>12s} {'test MSE':>12s} "
        f"{'seconds':>8s}"
    )
    for label, alpha, val, tst, sec in rows:
        print(f"{label:28s} {alpha:10.4g} {val:12.6g} {tst:12.6g} {sec:8.3f}")
    print(
        f"{type(estimator).__name__} first fit, compilation included: "
        f"{t_cold:.2f} s; grid local minima at alpha = "
        f"{np.array2string(model.local_minima_, precision=4)}"
    )
    print(
        f"cv error ratio bilevax / best of LassoCV's 100-point grid: "
        f"{model.validation_error_ / grid_error:.5f}"
    )
    return reference, model


def compare_logistic(name, X, Xt, y, yt, cv=5):
    """Sparse logistic regression: `LogisticRegressionCV` (liblinear, 100 `C`s,
    `intercept_scaling=1e4` so that its intercept is, as saga's and ours,
    practically unpenalised; scikit-learn >= 1.8 spelling of the L1 penalty)
    against `SparseLogisticHO` on the same stratified folds."""
    folds = list(StratifiedKFold(cv).split(X, y))
    reference = LogisticRegressionCV(
        Cs=100,
        l1_ratios=[1.0],
        solver="liblinear",
        intercept_scaling=1e4,
        cv=folds,
        scoring="neg_log_loss",
        max_iter=10_000,
        use_legacy_attributes=False,
    )
    estimator = bx.sklearn.SparseLogisticHO(cv=folds)
    _, t_ref = timed(lambda: reference.fit(X, y))
    _, t_cold = timed(lambda: estimator.fit(X, y))
    model, t_warm = timed(lambda: estimator.fit(X, y))
    curve = -np.asarray(reference.scores_).reshape(cv, -1).mean(axis=0)
    rows = [
        (
            "LogisticRegressionCV",
            float(np.ravel(reference.C_)[0]),
            curve.min(),
            reference,
        ),
        (
            "SparseLogisticHO (compiled)",
            float(model.C_[0]),
            model.validation_error_,
            model,
        ),
    ]
    print(f"\n{name}  (n={X.shape[0]}, p={X.shape[1]}, {cv} stratified folds)")
    print(
        f"{'method':28s} {'C':>10s} {'cv logloss':>12s} {'test logloss':>12s} "
        f"{'test acc':>9s} {'seconds':>8s}"
    )
    for (label, C, val, fitted), sec in zip(rows, (t_ref, t_warm), strict=True):
        test_loss = log_loss(yt, fitted.predict_proba(Xt))
        accuracy = np.mean(fitted.predict(Xt) == yt)
        print(
            f"{label:28s} {C:10.4g} {val:12.6g} {test_loss:12.6g} {accuracy:9.4f} "
            f"{sec:8.3f}"
        )
    print(
        f"SparseLogisticHO first fit, compilation included: {t_cold:.2f} s; grid "
        f"local minima at C = {np.array2string(model.local_minima_, precision=4)}"
    )
    print(
        "cv log-loss ratio bilevax / best of LogisticRegressionCV's 100-point grid "
        f"(liblinear, tol 1e-4): {model.validation_error_ / curve.min():.5f}"
    )
    return (reference.Cs_, curve), model


def _panel(ax, grid, coarse, path, xlabel, ylabel, title):
    ax.plot(*grid[1], "-", color="0.6", label=grid[0])
    ax.plot(*coarse, "s", color="C1", label="coarse grid (bilevax)")
    ax.plot(*path, "o-", color="C0", ms=3, label="hypergradient path (HOAG)")
    ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()


def plot(reference, model, logistic, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    lasso_curve = (reference.alphas_, reference.mse_path_.mean(axis=-1))
    _panel(
        left,
        ("LassoCV's 100-point grid", lasso_curve),
        (model.coarse_alphas_, model.coarse_errors_),
        (model.alpha_path_, model.error_path_),
        "alpha",
        "cross-validation MSE",
        "Lasso on diabetes",
    )
    curve, fitted = logistic
    _panel(
        right,
        ("LogisticRegressionCV's 100-point grid", curve),
        (fitted.coarse_Cs_, fitted.coarse_errors_),
        (fitted.C_path_, fitted.error_path_),
        "C",
        "cross-validation log-loss",
        "L1 logistic regression on breast_cancer",
    )
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"saved {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--p", type=int, default=7129, help="synthetic features")
    args = parser.parse_args()
    data = diabetes()
    reference, model = compare("diabetes, Lasso", *data, None, cv=5)
    compare("diabetes, elastic net (l1_ratio 0.5)", *data, 0.5, cv=5)
    compare("synthetic, Lasso", *synthetic(p=args.p), None, cv=5)
    logistic = compare_logistic("breast_cancer, L1 logistic", *breast_cancer())
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(reference, model, logistic, args.out / "sparse_regularisation.png")


if __name__ == "__main__":
    main()
