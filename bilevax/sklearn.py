r"""scikit-learn-style estimators whose regularisation strength is tuned by
hypergradient descent on the cross-validation error, the front door to
`bilevel.ProximalGradient` and the support-restricted adjoint.

The objectives are scikit-learn's, so `alpha_` means what `LassoCV.alpha_` and
`ElasticNetCV.alpha_` mean:

- `LassoHO`: `1/(2 n) ‖t - X w - b‖² + α ‖w‖₁` (or `Σ_j α_j |w_j|` with
  `weighted=True`);
- `ElasticNetHO`: `1/(2 n) ‖t - X w - b‖² + α ρ ‖w‖₁ + α (1 - ρ)/2 ‖w‖²`.

The outer loss is the cross-validation mean squared error, averaged over the
folds as `LassoCV` does (one inner problem per fold, all solved together; the
intercept `b` is fitted by centring each training fold, as scikit-learn does).
`fit` first evaluates the error on a coarse log grid of `α` from `α_max` (the
smallest `α` with `w = 0`) down to `1e-3 α_max` (scikit-learn's `eps`); it records
the grid's local minima (`local_minima_`: the validation curve of the Lasso is
not convex in `α`) and runs HOAG on `log α` from each of the best `n_starts`
of them, keeping the best end point.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import prox as _prox
from .bilevel import HOAG, BilevelData, BilevelProblem, ProximalGradient
from .implicit import SupportAdjoint


def _residuals(w, batch):
    """`t - ȳ_k - (X - x̄_k) w_k` for each fold `k` (columns), `(n, K)`."""
    X, t, train, _ = batch
    counts = jnp.sum(train, axis=0)
    pred = X @ w.T
    offset = jnp.sum(train * t[:, None], axis=0) - jnp.sum(train * pred, axis=0)
    return t[:, None] - pred - offset / counts


def _train_loss(x, w, batch):
    """`Σ_k 1/(2 n_k) ‖t_k - X_k w_k - b_k‖²` over the training folds."""
    train = batch[2]
    return 0.5 * jnp.sum(
        jnp.sum(train * _residuals(w, batch) ** 2, axis=0) / jnp.sum(train, axis=0)
    )


def _validation_loss(x, w, batch):
    """Mean over folds of the validation mean squared error (`LassoCV`'s)."""
    val = batch[3]
    errors = jnp.sum(val * _residuals(w, batch) ** 2, axis=0) / jnp.sum(val, axis=0)
    return jnp.mean(errors)


_PROBLEM = BilevelProblem(outer=_validation_loss, inner=_train_loss)
# The supports of all folds together: up to ~n per fold before the dense LU gives
# way to GMRES on the masked system.
_SUPPORT = SupportAdjoint(max_support=256)


class _ElasticNetParams(eqx.Module):
    l1_ratio: float

    def __call__(self, x):
        alpha = jnp.exp(x)
        return self.l1_ratio * alpha, (1.0 - self.l1_ratio) * alpha


def _folds(cv, n):
    if isinstance(cv, int):
        if cv < 2 or cv > n:
            raise ValueError(f"`cv` must be an int in [2, n_samples={n}]; got {cv}.")
        tests = np.array_split(np.arange(n), cv)  # scikit-learn's KFold
        return [(np.setdiff1d(np.arange(n), te), te) for te in tests]
    return [(np.asarray(tr), np.asarray(te)) for tr, te in cv]


def _masks(folds, n, dtype):
    train, val = np.zeros((n, len(folds))), np.zeros((n, len(folds)))
    for k, (tr, te) in enumerate(folds):
        train[tr, k], val[te, k] = 1.0, 1.0
    return jnp.asarray(train, dtype), jnp.asarray(val, dtype)


@eqx.filter_jit
def _grid_errors(inner, log_alphas, w0, batch, tol):
    """Validation error along a grid of `log α` (warm-started, large to small)."""

    def one(w, x):
        g = lambda x_, w_: _train_loss(x_, w_, batch)
        w, _ = inner.solve(g, w, x, tol)
        return w, _validation_loss(x, w, batch)

    return jax.lax.scan(one, w0, log_alphas)[1]


@eqx.filter_jit
def _hoag_step(algorithm, state, data):
    return algorithm.step(_PROBLEM, state, data, None)[0]


def _centred_loss(x, w, batch):
    X, t = batch
    return 0.5 * jnp.mean((t - X @ w) ** 2)


@eqx.filter_jit
def _refit_solve(inner, x, centred, tol):
    g = lambda x_, w_: _centred_loss(x_, w_, centred)
    return inner.solve(g, jnp.zeros(centred[0].shape[1], centred[0].dtype), x, tol)[0]


def _local_minima(errors):
    e = np.asarray(errors)
    padded = np.concatenate([[np.inf], e, [np.inf]])
    return np.flatnonzero((e < padded[:-2]) & (e <= padded[2:]))


class _HyperparameterLinearModel(eqx.Module):
    """Shared `fit`; subclasses give the prox, `θ(log α)` and `α_max`."""

    @abc.abstractmethod
    def _inner(self) -> ProximalGradient:
        """The proximal-gradient inner solver."""

    @abc.abstractmethod
    def _alpha_max(self, X, t) -> float:
        """The smallest `α` whose solution is zero (on centred data)."""

    def _check(self, X, t):
        X, t = np.asarray(X), np.asarray(t)
        if X.ndim != 2 or t.shape != (X.shape[0],):
            raise ValueError(
                f"`fit(X, y)` needs X of shape (n, p) and y of shape (n,); got "
                f"{X.shape} and {t.shape}."
            )
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(t))):
            raise ValueError("`fit(X, y)`: X or y holds NaN or infinity.")
        return X, t

    def fit(self, X, y):
        """Tune `α` on the folds, then refit on all of `(X, y)`; returns a
        `FittedLinearModel`."""
        X, t = self._check(X, y)
        dtype = jnp.asarray(0.0).dtype
        folds = _folds(self.cv, X.shape[0])
        train, val = _masks(folds, X.shape[0], dtype)
        batch = (jnp.asarray(X, dtype), jnp.asarray(t, dtype), train, val)
        w0 = jnp.zeros((len(folds), X.shape[1]), dtype)
        alpha_max = self._alpha_max(X - X.mean(0), t - t.mean())
        grid = jnp.log(jnp.geomspace(alpha_max, 1e-3 * alpha_max, self.n_coarse))
        grid = grid.astype(dtype)
        tol = max(self.tol, 100 * np.finfo(dtype).eps) * np.sqrt(np.mean(t**2))
        errors = np.asarray(_grid_errors(self._inner(), grid, w0, batch, tol))
        minima = _local_minima(errors)
        starts = minima[np.argsort(errors[minima])][: self.n_starts]
        runs = [self._descend(grid[i], w0, batch, tol) for i in starts]
        path, errors_path = min(runs, key=lambda r: min(r[1]))
        x = path[int(np.argmin(errors_path))]  # the best point visited
        error = _grid_errors(self._inner(), x[None], w0, batch, tol)[0]
        return self._refit(X, t, (path, x, errors_path, float(error)), grid, errors)

    def _descend(self, x0, w0, batch, tol):
        """HOAG on `log α` from `x0`; returns the path of `x` and its errors."""
        shape = (batch[0].shape[1],) if self.weighted else ()
        x = jnp.full(shape, x0)
        algorithm = HOAG(inner_solver=self._inner(), eps0=self.eps0)
        data = BilevelData(batch, batch)
        state = algorithm.init(_PROBLEM, x, w0, data, None)
        xs, errors = [], []
        for _ in range(self.max_iter):
            state = _hoag_step(algorithm, state, data)
            xs.append(state.prev_x)  # the accepted point and its error
            errors.append(float(state.prev_value))
            if float(state.delta) <= 1e-4:  # the next step moves log α by <= 1e-4
                break
        return xs, errors

    def _refit(self, X, t, best, grid, errors):
        path, x, path_errors, error = best
        x_mean, t_mean = X.mean(0), t.mean()
        centred = (jnp.asarray(X - x_mean), jnp.asarray(t - t_mean))
        tol = 1e-3 * self.tol * float(np.sqrt(np.mean(t**2)))
        w = _refit_solve(self._inner(), x, centred, tol)
        coef = np.asarray(w)
        alphas = np.exp(np.asarray(grid))
        return FittedLinearModel(
            alpha_=np.exp(np.asarray(x)),
            coef_=coef,
            intercept_=float(t_mean - x_mean @ coef),
            validation_error_=error,
            coarse_alphas_=alphas,
            coarse_errors_=np.asarray(errors),
            local_minima_=alphas[_local_minima(errors)],
            alpha_path_=np.exp(np.stack([np.asarray(p) for p in path])),
            error_path_=np.asarray(path_errors),
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
      the best grid local minima; `max_iter`: HOAG steps per run; `eps0`: HOAG's
      first tolerance; `tol`: inner tolerance relative to `rms(y)`.

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
    eps0: float = 1e-3
    tol: float = 1e-6

    def _inner(self):
        return ProximalGradient(_prox.l1, jnp.exp, num_steps=100_000, support=_SUPPORT)

    def _alpha_max(self, X, t):
        return float(np.max(np.abs(X.T @ t)) / X.shape[0])


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
    eps0: float = 1e-3
    tol: float = 1e-6

    def __check_init__(self):
        if not 0 < self.l1_ratio <= 1:
            raise ValueError(f"`l1_ratio` must be in (0, 1]; got {self.l1_ratio}.")

    def _inner(self):
        params = _ElasticNetParams(self.l1_ratio)
        return ProximalGradient(
            _prox.elastic_net, params, num_steps=100_000, support=_SUPPORT
        )

    def _alpha_max(self, X, t):
        return float(np.max(np.abs(X.T @ t)) / (X.shape[0] * self.l1_ratio))


__all__ = ["ElasticNetHO", "FittedLinearModel", "LassoHO"]
