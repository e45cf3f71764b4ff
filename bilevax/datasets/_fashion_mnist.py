"""Fashion-MNIST from the IDX files of the Debian package `dataset-fashion-mnist`."""

import gzip
import os

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: str) -> np.ndarray:
    """An IDX array (magic 0x0000 08 nd: unsigned bytes, big-endian dims)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes.")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {data.size} bytes for shape {dims}.")
    return data.reshape(tuple(dims))


def _find(root: str, name: str) -> str:
    for candidate in (name + ".gz", name):
        path = os.path.join(root, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"Fashion-MNIST file {name}(.gz) not found under {root}. Install the Debian "
        "package that ships it: `sudo apt-get install -y dataset-fashion-mnist` "
        f"(files under {DEFAULT_ROOT}), or pass `root=` to a folder with the four "
        "IDX files."
    )


def fashion_mnist(
    root: str | None = None, dtype=None
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """Fashion-MNIST: 60,000 training and 10,000 test images of 10 clothing classes.

    **Arguments:**

    - `root`: folder of the IDX files (`.gz` or not); default that of the Debian
      package `dataset-fashion-mnist`.
    - `dtype`: floating dtype of the images (default: JAX's default float).

    **Returns:** `((X_train, y_train), (X_test, y_test))` with images flattened to
    784 pixels scaled to [0, 1] and integer labels in 0..9.

    Example:

    ```python
    >>> import bilevax as bx
    >>> try:  # with the data installed: ((X_train, y_train), (X_test, y_test))
    ...     (X, y), (X_test, y_test) = bx.datasets.fashion_mnist(root="/no/such/folder")
    ... except FileNotFoundError as e:  # a missing file says how to install it
    ...     print("apt-get install -y dataset-fashion-mnist" in str(e))
    True

    ```
    """
    root = DEFAULT_ROOT if root is None else root
    parts = []
    for images, labels in _FILES.values():
        X = _read_idx(_find(root, images))
        y = _read_idx(_find(root, labels))
        X = jnp.asarray(X.reshape(X.shape[0], -1) / 255.0, dtype or jnp.float32)
        parts.append((X, jnp.asarray(y, jnp.int32)))
    return parts[0], parts[1]
