"""Dataset loaders for the examples and benchmarks.

Loaders return NumPy-free JAX arrays in a `Split` of train, validation and test
parts. Data are read from packages installed on the machine (scikit-learn's bundled
datasets, the Debian package `dataset-fashion-mnist`); a missing package gives an
error that says how to install it.

`bilevax.datasets.cutest.load(name)` gives CUTEst problems from the PyPI package
`sif2jax` as `bilevax.solvers.ConstrainedProblem`s.
"""

from . import cutest as cutest
from ._fashion_mnist import fashion_mnist as fashion_mnist
from ._sklearn import Split as Split, breast_cancer as breast_cancer, digits as digits

__all__ = ["Split", "breast_cancer", "cutest", "digits", "fashion_mnist"]
