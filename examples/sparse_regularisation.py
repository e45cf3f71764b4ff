"""Tune the strength of L1-type penalties by hypergradients: `bx.sklearn.LassoHO`
and `ElasticNetHO` against scikit-learn's `LassoCV` / `ElasticNetCV` on the same
folds and the same objective.

Datasets: diabetes (bundled with scikit-learn; its validation curve has several
local minima in α) and a synthetic problem shaped like the gene-expression one of
Bertrand et al. (2020): n = 38, p = 7129, a 5-sparse truth plus noise. For each:
the chosen α, the cross-validation error (the mean over folds of the held-out
MSE, `LassoCV`'s criterion), the error on a held-out test set, and the wall time
(bilevax's first fit compiles; the second, timed separately, reuses it). Saves a
plot of the validation error against α: the grid's curve and the hypergradient
path on it.

    PYTHONPATH=$PWD python examples/sparse_regularisation.py --out docs/images
"""

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402
from sklearn.linear_model import ElasticNetCV, LassoCV  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

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


def plot(reference, model, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        reference.alphas_,
        reference.mse_path_.mean(axis=-1),
        "-",
        color="0.6",
        label="LassoCV's 100-point grid",
    )
    ax.plot(
        model.coarse_alphas_,
        model.coarse_errors_,
        "s",
        color="C1",
        label="coarse grid (bilevax)",
    )
    ax.plot(
        model.alpha_path_,
        model.error_path_,
        "o-",
        color="C0",
        ms=3,
        label="hypergradient path (HOAG)",
    )
    ax.set(
        xscale="log",
        xlabel="alpha",
        ylabel="cross-validation MSE",
        title="Lasso on diabetes",
    )
    ax.legend()
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
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(reference, model, args.out / "sparse_regularisation.png")


if __name__ == "__main__":
    main()
