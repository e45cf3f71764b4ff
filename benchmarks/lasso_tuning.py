"""Lasso strength tuning: time to reach the best cross-validation error of
`LassoCV`'s 100-point grid (within 1%), bilevax (`bx.sklearn.LassoHO`) against
`LassoCV`, on the same folds and the same objective, float64.

Problem: Gaussian design `n × p`, a 5-sparse truth with ±2 entries, noise 0.5;
`1/(2n)‖y - Xw - b‖² + α‖w‖₁`; 5 unshuffled folds (scikit-learn's KFold, as
`LassoCV(cv=5)`); criterion: the mean over folds of the held-out MSE.

- LassoCV: its default 100-point grid (`eps=1e-3`), `tol=1e-4` (its default) and
  `n_jobs=1`; its time is the whole `fit` (the 5 paths and the refit).
- bilevax: `LassoHO(cv=5)` with its defaults (10-point coarse grid solved
  loosely, hypergradient descent from its best local minima, tight polish; inner
  solves by warm-started working-set coordinate descent, hypergradients on the
  support). Its time is the median of compiled `fit`s (the first `fit` compiles
  and is reported apart as "cold", compilation included); the row says whether
  its cross-validation error is within 1% of (or below) the grid's best.

Each time is the median of `--repeats` runs. Run:

    PYTHONPATH=$PWD python benchmarks/lasso_tuning.py [--sizes 38x7129 100x1000]
"""

import argparse
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from sklearn.linear_model import LassoCV  # noqa: E402

import bilevax as bx  # noqa: E402


def problem(n, p, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    w = np.zeros(p)
    w[rng.choice(p, 5, replace=False)] = rng.choice([-2.0, 2.0], 5)
    return X, X @ w + 0.5 * rng.standard_normal(n)


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def row(n, p, repeats):
    X, y = problem(n, p)
    reference, t_cv = median_time(lambda: LassoCV(cv=5).fit(X, y), repeats)
    grid_best = reference.mse_path_.mean(axis=-1).min()
    estimator = bx.sklearn.LassoHO(cv=5)
    start = time.perf_counter()
    estimator.fit(X, y)
    cold = time.perf_counter() - start
    model, t_ho = median_time(lambda: estimator.fit(X, y), repeats)
    ratio = model.validation_error_ / grid_best
    print(
        f"{n:>6d} {p:>7d} {t_cv:10.3f} {t_ho:10.3f} {cold:10.2f} "
        f"{t_cv / t_ho:8.1f} {ratio:10.4f} {'yes' if ratio <= 1.01 else 'NO':>6s}",
        flush=True,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["38x100", "38x1000", "38x7129", "100x10000"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}"
    )
    print(
        f"{'n':>6s} {'p':>7s} {'LassoCV s':>10s} {'bilevax s':>10s} "
        f"{'cold s':>10s} {'speedup':>8s} {'cv/grid':>10s} {'<=1%':>6s}"
    )
    for size in args.sizes:
        n, p = map(int, size.split("x"))
        row(n, p, args.repeats)


if __name__ == "__main__":
    main()
