"""scikit-learn's bundled datasets, split and standardised."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._optional import require


class Split(eqx.Module):
    """Train/validation/test parts of a supervised dataset.

    Each part is a pair `(features, targets)` with `features` of shape `(n, d)`.

    Example:

    ```python
    >>> import bilevax as bx
    >>> data = bx.datasets.breast_cancer(sizes=(300, 150))
    >>> [part[0].shape for part in (data.train, data.validation, data.test)]
    [(300, 30), (150, 30), (119, 30)]

    ```
    """

    train: tuple[Array, Array]
    validation: tuple[Array, Array]
    test: tuple[Array, Array]


def _sklearn_datasets():
    return require(
        "sklearn.datasets",
        "This loader needs scikit-learn, which ships the data: "
        "`pip install 'bilevax[examples]'` (or `pip install scikit-learn`).",
    )


def _split_standardise(X, y, sizes, seed, dtype) -> Split:
    n = X.shape[0]
    n_train, n_val = sizes
    if n_train <= 0 or n_val <= 0 or n_train + n_val >= n:
        raise ValueError(
            f"`sizes=(train, validation)` must be positive and leave a test set; got "
            f"{sizes} for {n} samples."
        )
    order = np.random.default_rng(seed).permutation(n)
    X, y = X[order], y[order]
    mean = X[:n_train].mean(axis=0)
    std = X[:n_train].std(axis=0)
    X = (X - mean) / np.where(std > 0, std, 1.0)
    parts = np.split(np.arange(n), [n_train, n_train + n_val])
    as_jax = lambda idx: (jnp.asarray(X[idx], dtype), jnp.asarray(y[idx]))
    return Split(*(as_jax(idx) for idx in parts))


def breast_cancer(
    sizes: tuple[int, int] = (300, 150), seed: int = 0, dtype=None
) -> Split:
    """Wisconsin breast cancer (569 samples, 30 features, binary labels in {0, 1}).

    Shuffled with `seed`, split into `sizes = (train, validation)` and the rest as
    test, features standardised with the training mean and deviation.

    **Arguments:**

    - `sizes`: numbers of training and validation samples.
    - `seed`: seed of the shuffle.
    - `dtype`: floating dtype of the features (default: JAX's default float).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> X, y = bx.datasets.breast_cancer(sizes=(300, 150)).train
    >>> X.shape, sorted(set(y.tolist())), abs(round(float(jnp.mean(X[:, 0])), 4))
    ((300, 30), [0, 1], 0.0)

    ```
    """
    data = _sklearn_datasets().load_breast_cancer()
    return _split_standardise(
        np.asarray(data.data, np.float64), np.asarray(data.target), sizes, seed, dtype
    )


def digits(sizes: tuple[int, int] = (1000, 400), seed: int = 0, dtype=None) -> Split:
    """scikit-learn's handwritten digits (1797 images of 8×8 pixels flattened to 64
    features, labels 0-9).

    Shuffled with `seed`, split into `sizes = (train, validation)` and the rest as
    test, features standardised with the training mean and deviation (constant
    pixels are left at zero).

    **Arguments:** as `breast_cancer`.

    Example:

    ```python
    >>> import bilevax as bx
    >>> data = bx.datasets.digits(sizes=(1000, 400))
    >>> data.train[0].shape, data.test[0].shape, int(data.train[1].max())
    ((1000, 64), (397, 64), 9)

    ```
    """
    data = _sklearn_datasets().load_digits()
    return _split_standardise(
        np.asarray(data.data, np.float64), np.asarray(data.target), sizes, seed, dtype
    )
