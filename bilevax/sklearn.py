r"""scikit-learn-style estimators whose regularisation strength is tuned by
hypergradient descent on the cross-validation error (Bertrand et al.,
"Implicit differentiation of Lasso-type models for hyperparameter optimization",
ICML 2020).

The objectives are scikit-learn's, so `alpha_` means what `LassoCV.alpha_` and
`ElasticNetCV.alpha_` mean:

- `LassoHO`: `1/(2 n) ‖t - X w - b‖² + α ‖w‖₁` (or `Σ_j α_j |w_j|` with
  `weighted=True`);
- `ElasticNetHO`: `1/(2 n) ‖t - X w - b‖² + α ρ ‖w‖₁ + α (1 - ρ)/2 ‖w‖²`.

The outer loss is the cross-validation mean squared error, averaged over the
folds as `LassoCV` does (one inner problem per fold, all solved together; the
intercept `b` is fitted by centring each training fold, as scikit-learn does).
Each inner problem is solved by working-set coordinate descent, warm-started
from the previous `α`, and differentiated on its support only (a `|S| × |S|`
system; `bilevax/_working_set.py`), as sparse-ho does.

`fit` first evaluates the error on a coarse log grid of `α` from `α_max` (the
smallest `α` with `w = 0`) down to `1e-3 α_max` (scikit-learn's `eps`), stopping
early at the first `α` where a fold's support reaches its rank (training rows
minus one; beyond it that fold interpolates its training rows, a costly regime
where `α` no longer selects a model; `coarse_alphas_` is then shorter); it records
the grid's local minima (`local_minima_`: the validation curve of the Lasso is
not convex in `α`) and runs hypergradient descent on `log α` from each of the best
`n_starts` of them (among those within `1 + start_gap` of the best), keeping the
best end point. The descent is HOAG's with exact
hypergradients (Pedregosa, ICML 2016): a trial step `-∇/L` is kept when it
lowers the error, `L` is then the secant (Barzilai-Borwein) curvature
`‖Δ∇‖/‖Δ log α‖` (never below a tenth of the previous one), and a rejected step
multiplies `L` by 4; it stops when the next step would move `log α` by less than
`1e-4` (in norm). Compiled programs are cached across fits of the same shapes.
"""

import abc
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _prox_newton
from ._working_set import solve_fold, support_cotangents


def _residuals(w, batch):
    """`t - ȳ_k - (X - x̄_k) w_k` for each fold `k` (columns), `(n, K)`."""
    X, t, train, _ = batch
    counts = jnp.sum(train, axis=0)
    pred = X @ w.T
    offset = jnp.sum(train * t[:, None], axis=0) - jnp.sum(train * pred, axis=0)
    return t[:, None] - pred - offset / counts


def _validation_loss(w, batch):
    """Mean over folds of the validation mean squared error (`LassoCV`'s)."""
    val = batch[3]
    errors = jnp.sum(val * _residuals(w, batch) ** 2, axis=0) / jnp.sum(val, axis=0)
    return jnp.mean(errors)


class _Inner(eqx.Module):
    """A family of inner problems, one per fold, indexed by a log-hyperparameter
    `x`; `W` stacks the folds' solutions, `s` is the `_Setting`."""

    @abc.abstractmethod
    def solve(self, x, W, s):
        """`(W, violation)`: the folds' solutions from the warm start `W`."""

    @abc.abstractmethod
    def validation_loss(self, W, s):
        """The outer loss: mean over folds of the held-out loss."""

    @abc.abstractmethod
    def hypergradient(self, x, W, s):
        """`(V(x), ∇V(x), W, violation)`."""

    @abc.abstractmethod
    def saturated(self, W, s):
        """Whether a fold's support has reached its rank (training rows - 1)."""


class _Penalty(_Inner):
    """Lasso / elastic net: `(λ₁, λ₂) = (ρ α, (1 - ρ) α)` per coordinate,
    `α = exp(x)`; `ρ` is an array, so that the Lasso and the elastic net share
    compiled programs."""

    l1_ratio: jax.Array

    def __call__(self, x, p):
        alpha = jnp.broadcast_to(jnp.exp(x), (p,))
        return self.l1_ratio * alpha, (1.0 - self.l1_ratio) * alpha

    def solve(self, x, W, s):
        return _solve(self, x, W, s)

    def validation_loss(self, W, s):
        return _validation_loss(W, s.batch)

    def hypergradient(self, x, W, s):
        return _hypergradient(self, x, W, s)

    def saturated(self, W, s):
        return jnp.any(jnp.sum(W != 0, axis=1) >= jnp.sum(s.batch[2], axis=0) - 1)


class _Setting(NamedTuple):
    """What a fit holds fixed: the data and folds, the inner tolerance, the
    working-set size."""

    batch: tuple
    tol: float
    size: int


def _solve(penalty, x, W, s):
    """Each fold's solution from the warm start `W` (`(K, p)`), and the largest
    optimality violation."""
    X, t, train, _ = s.batch
    lam1, lam2 = penalty(x, X.shape[1])
    fold = lambda m, w: solve_fold(X, t, m, w, lam1, lam2, s.tol, s.size)
    W, violation = jax.vmap(fold)(train.T, W)
    return W, jnp.max(violation)


def _hypergradient(penalty, x, W, s):
    """`(V(x), ∇V(x), W, violation)`: the CV error and its gradient in `log α`."""
    X, t, train, _ = s.batch
    W, violation = _solve(penalty, x, W, s)
    value, grad_w = jax.value_and_grad(_validation_loss)(W, s.batch)
    lam2 = penalty(x, X.shape[1])[1]
    fold = lambda m, w, g: support_cotangents(X, t, m, w, lam2, g, s.size)
    ct1, ct2 = jax.vmap(fold)(train.T, W, grad_w)
    _, vjp = jax.vjp(lambda x_: penalty(x_, X.shape[1]), x)
    (grad,) = vjp((jnp.sum(ct1, axis=0), jnp.sum(ct2, axis=0)))
    return value, grad, W, violation


@eqx.filter_jit
def _grid(problem, log_alphas, W, s):
    """Errors and solutions along a grid of `log α` (large to small, warm-started),
    up to the first point where a fold's support reaches its rank `n_k - 1`: from
    there on that fold interpolates its training rows. Returns the number of
    points solved, the errors, the solutions and the largest violation."""

    def cond(c):
        return (c[0] < log_alphas.shape[0]) & ~c[-1]

    def body(c):
        i, W, errors, Ws, violation, _ = c
        W, v = problem.solve(log_alphas[i], W, s)
        error = problem.validation_loss(W, s)
        full = problem.saturated(W, s)
        errors, Ws = errors.at[i].set(error), Ws.at[i].set(W)
        return i + 1, W, errors, Ws, jnp.maximum(violation, v), full

    errors = jnp.full(log_alphas.shape, jnp.inf, W.dtype)
    Ws = jnp.zeros((log_alphas.shape[0], *W.shape), W.dtype)
    start = (0, W, errors, Ws, jnp.zeros((), W.dtype), jnp.array(False))
    k, _, errors, Ws, violation, _ = jax.lax.while_loop(cond, body, start)
    return k, errors, Ws, violation


_solve_jit = eqx.filter_jit(_solve)


class _LogisticL1(_Inner):
    """L1-penalised logistic regression, `x = log C`; `s.batch` is
    `([X, 1], t ∈ {±1}, train, val)`, the intercept last (`bilevax/_prox_newton.py`)."""

    def _lam1(self, x, s):
        """`λ = 1 / (C n_k)` per fold and coordinate, `0` for the intercept:
        `(K, p + 1)`."""
        Xa, _, train, _ = s.batch
        lam = jnp.exp(-x) / jnp.sum(train, axis=0)
        return lam[:, None] * jnp.ones(Xa.shape[1], Xa.dtype).at[-1].set(0.0)

    def solve(self, x, W, s):
        Xa, t, train, _ = s.batch
        fold = lambda m, w, lam: _prox_newton.solve_fold(
            Xa, t, m, w, lam, s.tol, s.size
        )
        W, violation = jax.vmap(fold)(train.T, W, self._lam1(x, s))
        return W, jnp.max(violation)

    def validation_loss(self, W, s):
        """Mean over folds of the held-out mean log-loss."""
        Xa, t, _, val = s.batch
        losses = val * jnp.logaddexp(0.0, -t[:, None] * (Xa @ W.T))
        return jnp.mean(jnp.sum(losses, axis=0) / jnp.sum(val, axis=0))

    def hypergradient(self, x, W, s):
        Xa, t, train, _ = s.batch
        W, violation = self.solve(x, W, s)
        value, grad_w = jax.value_and_grad(self.validation_loss)(W, s)
        lam, vjp = jax.vjp(lambda x_: self._lam1(x_, s), x)
        fold = lambda m, w, lam_k, g: _prox_newton.support_cotangent(
            Xa, t, m, w, lam_k, g, s.size
        )
        (grad,) = vjp(jax.vmap(fold)(train.T, W, lam, grad_w))
        return value, grad, W, violation

    def saturated(self, W, s):
        counts = jnp.sum(s.batch[2], axis=0)
        return jnp.any(jnp.sum(W[:, :-1] != 0, axis=1) >= counts - 1)


_solve_logistic = eqx.filter_jit(lambda x, W, s: _LogisticL1().solve(x, W, s))


class _Descent(NamedTuple):
    x: jax.Array
    W: jax.Array
    value: jax.Array
    grad: jax.Array
    L: jax.Array
    k: jax.Array
    xs: jax.Array
    values: jax.Array
    violation: jax.Array


def _descent_step(problem, s):
    def step(d):
        x = d.x - d.grad / d.L
        value, grad, W, violation = problem.hypergradient(x, d.W, s)
        ok = value <= d.value
        secant = jnp.linalg.norm(grad - d.grad) / jnp.linalg.norm(x - d.x)
        L = jnp.where(ok, jnp.maximum(secant, d.L / 10), 4 * d.L)
        keep = lambda new, old: jnp.where(ok, new, old)
        return _Descent(
            keep(x, d.x),
            keep(W, d.W),
            keep(value, d.value),
            keep(grad, d.grad),
            L,
            d.k + 1,
            d.xs.at[d.k].set(x),
            d.values.at[d.k].set(value),
            keep(violation, d.violation),
        )

    return step


@eqx.filter_jit
def _descend(problem, x0, W0, s, step0, max_iter):
    """Hypergradient descent on `log α` from `x0`, first trying a step of length
    `step0` (module docstring); the trial points and their errors are recorded in
    `xs`, `values`."""
    value, grad, W, violation = problem.hypergradient(x0, W0, s)
    tiny = jnp.finfo(value.dtype).tiny
    L = jnp.maximum(jnp.linalg.norm(grad) / step0, tiny)
    xs = jnp.zeros((max_iter + 1, *x0.shape), x0.dtype).at[0].set(x0)
    values = jnp.full(max_iter + 1, jnp.nan, value.dtype).at[0].set(value)
    start = _Descent(x0, W, value, grad, L, jnp.array(1), xs, values, violation)
    cond = lambda d: (d.k <= max_iter) & (jnp.linalg.norm(d.grad) / d.L > 1e-4)
    return jax.lax.while_loop(cond, _descent_step(problem, s), start)


def _folds(cv, n):
    if isinstance(cv, int):
        if cv < 2 or cv > n:
            raise ValueError(f"`cv` must be an int in [2, n_samples={n}]; got {cv}.")
        tests = np.array_split(np.arange(n), cv)  # scikit-learn's KFold
        return [(np.setdiff1d(np.arange(n), te), te) for te in tests]
    try:
        folds = [(np.asarray(tr, int), np.asarray(te, int)) for tr, te in cv]
    except (TypeError, ValueError) as e:
        raise ValueError(
            "`cv` must be a number of folds or a list of (train_indices, "
            f"test_indices) pairs of integer arrays; got {cv!r}."
        ) from e
    if not folds or any(tr.size == 0 or te.size == 0 for tr, te in folds):
        raise ValueError("`cv`: every fold needs training and test indices.")
    return folds


def _masks(folds, n, dtype):
    train, val = np.zeros((n, len(folds))), np.zeros((n, len(folds)))
    for k, (tr, te) in enumerate(folds):
        train[tr, k], val[te, k] = 1.0, 1.0
    return jnp.asarray(train, dtype), jnp.asarray(val, dtype)


def _local_minima(errors):
    e = np.asarray(errors)
    padded = np.concatenate([[np.inf], e, [np.inf]])
    return np.flatnonzero((e < padded[:-2]) & (e <= padded[2:]))


def _check_converged(violation, tol, what):
    tol = float(tol)
    if not float(violation) <= 10 * tol:
        raise RuntimeError(
            f"`fit`: the {what} did not converge (optimality violation "
            f"{float(violation):.3g} > {10 * tol:.3g}); raise `tol` or check the data."
        )


class _Tuned(eqx.Module):
    """Shared argument checks and search (coarse grid, then hypergradient descent
    from its best local minima, then a tight polish; module docstring)."""

    def __check_init__(self):
        for name, low in (("n_coarse", 2), ("n_starts", 1), ("max_iter", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"`{name}` must be an int >= {low}; got {value!r}.")
        for name in ("tol", "coarse_tol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0; got {getattr(self, name)!r}.")
        if not self.start_gap >= 0:
            raise ValueError(f"`start_gap` must be >= 0; got {self.start_gap!r}.")

    def _search(self, problem, s, grid, W0, coarse_tol, shape):
        """Returns the polished run, the paths of the runs and the coarse grid."""
        dtype = W0.dtype
        coarse = s._replace(tol=jnp.maximum(s.tol, coarse_tol))
        k, errors, Ws, violation = _grid(problem, jnp.asarray(grid, dtype), W0, coarse)
        _check_converged(violation, coarse.tol, "coarse grid's solves")
        grid, errors = grid[: int(k)], np.asarray(errors)[: int(k)]
        minima = _local_minima(errors)
        minima = minima[errors[minima] <= (1 + self.start_gap) * errors.min()]
        starts = minima[np.argsort(errors[minima])][: self.n_starts]
        step0 = jnp.asarray(0.5 * abs(grid[0] - grid[1]), dtype)  # half a grid cell
        runs = [
            _descend(
                problem,
                jnp.full(shape, grid[i], dtype),
                Ws[i],
                coarse,
                step0,
                self.max_iter,
            )
            for i in starts
        ]
        rough = min(runs, key=lambda d: float(d.value))
        # polish the best run with tight solves, from the step it would take next
        step = jnp.maximum(jnp.linalg.norm(rough.grad) / rough.L, 1e-3)
        best = _descend(problem, rough.x, rough.W, s, step, self.max_iter)
        _check_converged(best.violation, s.tol, "hypergradient descent's solves")
        path = [(d.xs[: int(d.k)], d.values[: int(d.k)]) for d in (rough, best)]
        return best, path, (grid, errors)


def _check_data(X, t):
    X, t = np.asarray(X), np.asarray(t)
    if X.ndim != 2 or t.shape != (X.shape[0],):
        raise ValueError(
            f"`fit(X, y)` needs X of shape (n, p) and y of shape (n,); got "
            f"{X.shape} and {t.shape}."
        )
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(t))):
        raise ValueError("`fit(X, y)`: X or y holds NaN or infinity.")
    return X, t


class _HyperparameterLinearModel(_Tuned):
    """Shared `fit` of the least-squares models; subclasses give `l1_ratio`."""

    @abc.abstractmethod
    def _l1_ratio(self) -> float:
        """`ρ`: 1 for the Lasso."""

    def _setting(self, X, t, folds, dtype):
        n, p = X.shape
        train, val = _masks(folds, n, dtype)
        batch = (jnp.asarray(X, dtype), jnp.asarray(t, dtype), train, val)
        Xc, tc = X - X.mean(0), t - t.mean()
        scale = float(np.max(np.abs(Xc.T @ tc)) / n)  # α_max of the Lasso
        tol = max(self.tol, 100 * float(np.finfo(dtype).eps)) * scale
        size = min(p, max(64, 2 * n))
        return _Setting(batch, jnp.asarray(tol, dtype), size), scale

    def fit(self, X, y):
        """Tune `α` on the folds, then refit on all of `(X, y)`; returns a
        `FittedLinearModel`. Raises `RuntimeError` if an inner solve fails."""
        X, t = _check_data(X, y)
        dtype = jnp.asarray(0.0).dtype
        s, scale = self._setting(X, t, _folds(self.cv, X.shape[0]), dtype)
        penalty = _Penalty(jnp.asarray(self._l1_ratio(), dtype))
        alpha_max = scale / self._l1_ratio()
        grid = np.log(np.geomspace(alpha_max, 1e-3 * alpha_max, self.n_coarse))
        W0 = jnp.zeros((s.batch[2].shape[1], X.shape[1]), dtype)
        shape = (X.shape[1],) if self.weighted else ()
        best, path, coarse = self._search(
            penalty, s, grid, W0, self.coarse_tol * scale, shape
        )
        return self._refit(X, t, penalty, best, path, coarse)

    def _refit(self, X, t, penalty, best, path, coarse):
        n, p = X.shape
        dtype = best.W.dtype
        s, _ = self._setting(X, t, [(np.arange(n), np.arange(n))], dtype)
        W, violation = _solve_jit(penalty, best.x, jnp.zeros((1, p), dtype), s)
        _check_converged(violation, s.tol, "refit")
        coef = np.asarray(W[0])
        grid, errors = coarse
        alphas = np.exp(grid)
        return FittedLinearModel(
            alpha_=np.exp(np.asarray(best.x)),
            coef_=coef,
            intercept_=float(t.mean() - X.mean(0) @ coef),
            validation_error_=float(best.value),
            coarse_alphas_=alphas,
            coarse_errors_=errors,
            local_minima_=alphas[_local_minima(errors)],
            alpha_path_=np.exp(np.concatenate([np.asarray(x) for x, _ in path])),
            error_path_=np.concatenate([np.asarray(v) for _, v in path]),
        )


class FittedLinearModel(eqx.Module):
    """What `LassoHO.fit` / `ElasticNetHO.fit` return.

    - `alpha_`: the tuned `α` (scikit-learn's meaning; an array of `p` with
      `weighted=True`; the best point the hypergradient runs visited);
      `coef_`, `intercept_`: the model refitted on all data.
    - `validation_error_`: cross-validation MSE at `alpha_` (`LassoCV`'s
      `mse_path_` averaged over folds), from a tight solve.
    - `coarse_alphas_`, `coarse_errors_`: the coarse grid and its errors;
      `local_minima_`: the grid's local minima (more than one: the validation curve
      is not unimodal, and the best of the starts from each is kept).
    - `alpha_path_`, `error_path_`: the hypergradient iterates and their errors.

    Example:

    ```python
    >>> import numpy as np
    >>> import bilevax as bx
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 8))
    >>> y = X[:, 0] - 2 * X[:, 1] + 0.5 * rng.standard_normal(60)
    >>> model = bx.sklearn.LassoHO(cv=3).fit(X, y)
    >>> bool(np.all(model.coef_[:2] != 0)), model.predict(X[:2]).shape
    (True, (2,))

    ```
    """

    alpha_: np.ndarray
    coef_: np.ndarray
    intercept_: float
    validation_error_: float
    coarse_alphas_: np.ndarray
    coarse_errors_: np.ndarray
    local_minima_: np.ndarray
    alpha_path_: np.ndarray
    error_path_: np.ndarray

    def predict(self, X):
        """`X @ coef_ + intercept_`."""
        return np.asarray(X) @ self.coef_ + self.intercept_


class LassoHO(_HyperparameterLinearModel):
    r"""Lasso whose `α` is tuned by hypergradients of the cross-validation error
    (`LassoCV`'s objective and folds; module docstring).

    **Arguments:**

    - `cv`: number of folds (scikit-learn's unshuffled `KFold`, as `LassoCV(cv=k)`)
      or a list of `(train_indices, test_indices)` pairs.
    - `weighted`: one `α_j` per feature (the weighted Lasso), started from the
      best scalar of the coarse grid.
    - `n_coarse`: points of the coarse grid; `n_starts`: hypergradient runs from
      the best grid local minima, among those whose error is within a factor
      `1 + start_gap` of the grid's best; `max_iter`: hypergradient steps per run;
      `tol`: the inner solves' optimality violation (largest distance of the
      gradient to the subdifferential), relative to the Lasso's `α_max`;
      `coarse_tol`: the same for the coarse grid's solves (looser: they only
      choose the starting points, and solves at small `α`, where the support
      nears the number of samples, are the costly ones).

    `fit(X, y)` raises `ValueError` for mismatched shapes or non-finite data.

    Example:

    ```python
    >>> import numpy as np
    >>> import bilevax as bx
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 8))
    >>> y = X[:, 0] - 2 * X[:, 1] + 0.5 * rng.standard_normal(60)
    >>> model = bx.sklearn.LassoHO(cv=3).fit(X, y)
    >>> bool(model.validation_error_ <= model.coarse_errors_.min())
    True

    ```
    """

    cv: int | list = 5
    weighted: bool = False
    n_coarse: int = 10
    n_starts: int = 2
    max_iter: int = 30
    tol: float = 1e-6
    coarse_tol: float = 1e-3
    start_gap: float = 0.1

    def _l1_ratio(self):
        return 1.0


class ElasticNetHO(_HyperparameterLinearModel):
    r"""Elastic net whose `α` is tuned by hypergradients of the cross-validation
    error (`ElasticNetCV`'s objective and folds, with a fixed `l1_ratio`).

    **Arguments:** as `LassoHO`, plus `l1_ratio` (`ρ ∈ (0, 1]`, default 0.5).

    Example:

    ```python
    >>> import numpy as np
    >>> import bilevax as bx
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 8))
    >>> y = X[:, 0] - 2 * X[:, 1] + 0.5 * rng.standard_normal(60)
    >>> model = bx.sklearn.ElasticNetHO(l1_ratio=0.5, cv=3).fit(X, y)
    >>> bool(model.validation_error_ <= model.coarse_errors_.min())
    True

    ```
    """

    l1_ratio: float = 0.5
    cv: int | list = 5
    weighted: bool = False
    n_coarse: int = 10
    n_starts: int = 2
    max_iter: int = 30
    tol: float = 1e-6
    coarse_tol: float = 1e-3
    start_gap: float = 0.1

    def __check_init__(self):
        if not 0 < self.l1_ratio <= 1:
            raise ValueError(f"`l1_ratio` must be in (0, 1]; got {self.l1_ratio}.")

    def _l1_ratio(self):
        return self.l1_ratio


class FittedLogisticModel(eqx.Module):
    """What `SparseLogisticHO.fit` returns (shapes as `LogisticRegressionCV`'s for
    two classes).

    - `C_` (`(1,)`): the tuned `C` (scikit-learn's meaning); `coef_` (`(1, p)`),
      `intercept_` (`(1,)`): the model refitted on all data; `classes_`: the two
      labels, `classes_[1]` the positive one.
    - `validation_error_`: the held-out log-loss at `C_` (mean over folds of each
      fold's mean log-loss), from a tight solve.
    - `coarse_Cs_`, `coarse_errors_`, `local_minima_`, `C_path_`, `error_path_`: as
      `FittedLinearModel`'s `coarse_alphas_` etc., in `C`.

    Example:

    ```python
    >>> import numpy as np
    >>> import bilevax as bx
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((80, 6))
    >>> y = (X[:, 0] - X[:, 1] + 0.5 * rng.standard_normal(80) > 0).astype(int)
    >>> model = bx.sklearn.SparseLogisticHO(cv=3).fit(X, y)
    >>> model.predict_proba(X[:2]).shape, model.predict(X[:2]).shape
    ((2, 2), (2,))

    ```
    """

    C_: np.ndarray
    coef_: np.ndarray
    intercept_: np.ndarray
    classes_: np.ndarray
    validation_error_: float
    coarse_Cs_: np.ndarray
    coarse_errors_: np.ndarray
    local_minima_: np.ndarray
    C_path_: np.ndarray
    error_path_: np.ndarray

    def decision_function(self, X):
        """`X @ coef_[0] + intercept_[0]`, `(n,)`."""
        return np.asarray(X) @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X):
        """`(n, 2)`: the probabilities of `classes_[0]` and `classes_[1]`."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1.0 - p1, p1], axis=1)

    def predict(self, X):
        """The more probable label of each row."""
        return self.classes_[(self.decision_function(X) > 0).astype(int)]


class SparseLogisticHO(_Tuned):
    r"""L1-penalised logistic regression whose `C` is tuned by hypergradients of
    the held-out log-loss (`LogisticRegression(l1_ratio=1, solver="saga")`'s
    objective, `‖w‖₁ + C Σ_i log(1 + exp(-t_i (x_iᵀw + b)))`, `t_i = ±1`, the
    intercept `b` unpenalised; so `C_` means what `LogisticRegressionCV`'s `C_`
    means with `scoring="neg_log_loss"`).

    Each fold is solved by proximal Newton on a working set, warm-started along
    `C`, and differentiated on its support (`bilevax/_prox_newton.py`); the
    search is `LassoHO`'s (module docstring) on `log C`, from a coarse grid
    from `C_min` (the largest `C` with `w = 0`) up to `10⁴ C_min`.

    **Arguments:**

    - `cv`: number of folds (unshuffled, unstratified `KFold`; for
      `LogisticRegressionCV(cv=k)`'s folds pass
      `list(StratifiedKFold(k).split(X, y))`) or a list of
      `(train_indices, test_indices)` pairs.
    - `n_coarse`, `n_starts`, `start_gap`, `max_iter`, `coarse_tol`: as `LassoHO`;
      `tol`: the inner solves' optimality violation, relative to `1 / (n C_min)`.

    `fit(X, y)` raises `ValueError` for mismatched shapes, non-finite `X` or a `y`
    without exactly two labels, and `RuntimeError` if an inner solve fails.

    Example:

    ```python
    >>> import numpy as np
    >>> import bilevax as bx
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((80, 6))
    >>> y = (X[:, 0] - X[:, 1] + 0.5 * rng.standard_normal(80) > 0).astype(int)
    >>> model = bx.sklearn.SparseLogisticHO(cv=3).fit(X, y)
    >>> bool(model.validation_error_ <= model.coarse_errors_.min())
    True

    ```
    """

    cv: int | list = 5
    n_coarse: int = 10
    n_starts: int = 2
    max_iter: int = 30
    tol: float = 1e-6
    coarse_tol: float = 1e-3
    start_gap: float = 0.1

    def _check(self, X, y):
        X, y = np.asarray(X), np.asarray(y)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ValueError(
                f"`fit(X, y)` needs X of shape (n, p) and y of shape (n,); got "
                f"{X.shape} and {y.shape}."
            )
        if not np.all(np.isfinite(X)):
            raise ValueError("`fit(X, y)`: X holds NaN or infinity.")
        classes = np.unique(y)
        if classes.shape != (2,):
            raise ValueError(
                f"`fit(X, y)`: y must hold exactly two labels; got {classes.size}."
            )
        return X, np.where(y == classes[1], 1.0, -1.0), classes

    def _setting(self, X, t, folds, dtype):
        n, p = X.shape
        train, val = _masks(folds, n, dtype)
        Xa = np.hstack([X, np.ones((n, 1))])
        batch = (jnp.asarray(Xa, dtype), jnp.asarray(t, dtype), train, val)
        b0 = np.log(np.mean(t > 0) / np.mean(t < 0))  # intercept-only fit
        grad = -X.T @ (t / (1.0 + np.exp(t * b0))) / n
        scale = float(np.max(np.abs(grad)))  # λ_max = 1 / (n C_min)
        tol = max(self.tol, 100 * float(np.finfo(dtype).eps)) * scale
        size = min(p + 1, max(64, 2 * n))
        return _Setting(batch, jnp.asarray(tol, dtype), size), scale

    def fit(self, X, y):
        """Tune `C` on the folds, then refit on all of `(X, y)`; returns a
        `FittedLogisticModel`."""
        X, t, classes = self._check(X, y)
        n, p = X.shape
        dtype = jnp.asarray(0.0).dtype
        s, scale = self._setting(X, t, _folds(self.cv, n), dtype)
        c_min = 1.0 / (n * scale)
        grid = np.log(np.geomspace(c_min, 1e4 * c_min, self.n_coarse))
        W0 = jnp.zeros((s.batch[2].shape[1], p + 1), dtype)
        problem = _LogisticL1()
        best, path, (grid, errors) = self._search(
            problem, s, grid, W0, self.coarse_tol * scale, ()
        )
        s_all, _ = self._setting(X, t, [(np.arange(n), np.arange(n))], dtype)
        W, violation = _solve_logistic(best.x, jnp.zeros((1, p + 1), dtype), s_all)
        _check_converged(violation, s_all.tol, "refit")
        w = np.asarray(W[0])
        Cs = np.exp(grid)
        return FittedLogisticModel(
            C_=np.exp(np.asarray(best.x)).reshape(1),
            coef_=w[None, :-1],
            intercept_=w[-1:],
            classes_=classes,
            validation_error_=float(best.value),
            coarse_Cs_=Cs,
            coarse_errors_=errors,
            local_minima_=Cs[_local_minima(errors)],
            C_path_=np.exp(np.concatenate([np.asarray(x) for x, _ in path])),
            error_path_=np.concatenate([np.asarray(v) for _, v in path]),
        )


__all__ = [
    "ElasticNetHO",
    "FittedLinearModel",
    "FittedLogisticModel",
    "LassoHO",
    "SparseLogisticHO",
]
