r"""Kernels for kernel ridge regression (the inner model of `KernelRidge` and KIP).

A kernel is called on two batches, `kernel(A, B) -> (n, m)`, with `A` of shape
`(n, ...)` and `B` of shape `(m, ...)`; trailing axes (image height, width,
channels) are flattened to `d` features.

- `RBF(scale)`: `exp(-‖a - b‖² / (2 · scale · d))`.
- `NNGP(depth, w_std, b_std)` and `NTK(depth, w_std, b_std)`: the infinite-width
  neural network Gaussian process and neural tangent kernels of a fully connected
  ReLU network with `depth` hidden layers in the NTK parameterisation (Neal 1996;
  Lee et al. 2018; Jacot et al. 2018), in closed form by the arc-cosine recursion
  (Cho and Saul 2009), as used by KIP (Nguyen, Chen, Lee, ICLR 2021).
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike


def _flat(A: ArrayLike) -> Array:
    A = jnp.asarray(A)
    if A.ndim < 2:
        raise ValueError(
            f"Kernels take batches of shape (n, ...) with n samples; got shape "
            f"{A.shape}."
        )
    return A.reshape(A.shape[0], -1)


class AbstractKernel(eqx.Module):
    """A positive semidefinite kernel on batches: `kernel(A, B) -> (n, m)`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> k = bx.bilevel.kernels
    >>> kernels = [k.RBF(), k.NNGP(), k.NTK()]
    >>> A, B = jnp.ones((4, 3)), jnp.zeros((2, 3))
    >>> [k(A, B).shape for k in kernels]
    [(4, 2), (4, 2), (4, 2)]

    ```
    """

    def __call__(self, A: ArrayLike, B: ArrayLike) -> Array:
        A, B = _flat(A), _flat(B)
        if A.shape[1] != B.shape[1]:
            raise ValueError(
                f"Kernel inputs have {A.shape[1]} and {B.shape[1]} features; they "
                "must match."
            )
        return self._matrix(A, B)

    @abc.abstractmethod
    def _matrix(self, A: Array, B: Array) -> Array:
        """The kernel matrix of flattened batches `(n, d)` and `(m, d)`."""


class RBF(AbstractKernel):
    r"""Gaussian kernel `k(a, b) = exp(-‖a - b‖² / (2 · scale · d))`, with `d` the
    number of features (so `scale = 1` suits standardised inputs).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> from bilevax.bilevel.kernels import RBF
    >>> K = RBF()(jnp.zeros((2, 3)), jnp.ones((1, 3)))  # exp(-3/(2·3))
    >>> K.shape, f"{float(K[0, 0]):.4f}"
    ((2, 1), '0.6065')

    ```
    """

    scale: float = 1.0

    def _matrix(self, A, B):
        sq = (
            jnp.sum(A**2, axis=1)[:, None]
            + jnp.sum(B**2, axis=1)[None, :]
            - 2 * A @ B.T
        )
        return jnp.exp(-jnp.maximum(sq, 0) / (2 * self.scale * A.shape[1]))


@jax.custom_jvp
def _arccos_moment(c: Array) -> Array:
    """`(√(1 - c²) + (π - arccos c) c) / π`: `2 E[relu(u) relu(v)]` for unit-variance
    `u, v` of correlation `c`. Its derivative `(π - arccos c)/π` is bounded, which
    autodiff through `arccos` and `√` does not see at `c = ±1`."""
    c = jnp.clip(c, -1, 1)
    return (jnp.sqrt(1 - c**2) + (jnp.pi - jnp.arccos(c)) * c) / jnp.pi


@_arccos_moment.defjvp
def _arccos_moment_jvp(primals, tangents):
    (c,), (t,) = primals, tangents
    return _arccos_moment(c), _arccos_step(c) * t


@jax.custom_jvp
def _arccos_step(c: Array) -> Array:
    """`(π - arccos c)/π`: `2 E[relu'(u) relu'(v)]` for correlation `c`."""
    return (jnp.pi - jnp.arccos(jnp.clip(c, -1, 1))) / jnp.pi


@_arccos_step.defjvp
def _arccos_step_jvp(primals, tangents):
    (c,), (t,) = primals, tangents
    tiny = jnp.finfo(jnp.result_type(c)).eps
    return _arccos_step(c), t / (jnp.pi * jnp.sqrt(jnp.maximum(1 - c**2, tiny)))


def _relu_network(A, B, depth, w_std, b_std) -> tuple[Array, Array]:
    """NNGP and NTK matrices of a `depth`-hidden-layer ReLU network."""
    w2, b2 = w_std**2, b_std**2
    d = A.shape[1]
    K = w2 * (A @ B.T) / d + b2
    ka = w2 * jnp.sum(A**2, axis=1) / d + b2
    kb = w2 * jnp.sum(B**2, axis=1) / d + b2
    ntk = K
    for _ in range(depth):
        norm = jnp.sqrt(ka[:, None] * kb[None, :])
        c = K / norm
        K = 0.5 * w2 * norm * _arccos_moment(c) + b2
        ntk = K + ntk * 0.5 * w2 * _arccos_step(c)
        ka, kb = 0.5 * w2 * ka + b2, 0.5 * w2 * kb + b2
    return K, ntk


class NNGP(AbstractKernel):
    r"""NNGP kernel of an infinitely wide fully connected ReLU network.

    With `K⁰(a, b) = w²·aᵀb/d + b_std²` and, per hidden layer,

    $$K^{l+1}(a, b) = \frac{w^2}{2π}\sqrt{K^l_{aa} K^l_{bb}}\,\big(\sin θ +
    (π - θ)\cos θ\big) + b_{std}^2,\quad \cos θ = K^l_{ab}/\sqrt{K^l_{aa}K^l_{bb}},$$

    the kernel is `K^depth` (the covariance of the network's outputs at random
    initialisation). Defaults as KIP's: `w_std = √2`, `b_std = 0.1`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> X = jax.random.normal(jax.random.key(0), (5, 8))
    >>> K = bx.bilevel.kernels.NNGP(depth=2)(X, X)
    >>> K.shape, bool(jnp.all(jnp.linalg.eigvalsh(K) > 0))
    ((5, 5), True)

    ```
    """

    depth: int = 1
    w_std: float = 2**0.5
    b_std: float = 0.1

    def _matrix(self, A, B):
        return _relu_network(A, B, self.depth, self.w_std, self.b_std)[0]


class NTK(AbstractKernel):
    r"""Neural tangent kernel of an infinitely wide fully connected ReLU network:
    `Θ⁰ = K⁰`, `Θ^{l+1} = K^{l+1} + Θ^l · w²(π - θ)/(2π)` with `K`, `θ` as for
    `NNGP` (the kernel of gradient-descent training of the network's linearisation).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> X = jax.random.normal(jax.random.key(0), (5, 8))
    >>> ntk, nngp = bx.bilevel.kernels.NTK()(X, X), bx.bilevel.kernels.NNGP()(X, X)
    >>> bool(jnp.all(jnp.diag(ntk) > jnp.diag(nngp)))  # the NTK adds the gradient terms
    True

    ```
    """

    depth: int = 1
    w_std: float = 2**0.5
    b_std: float = 0.1

    def _matrix(self, A, B):
        return _relu_network(A, B, self.depth, self.w_std, self.b_std)[1]


__all__ = ["AbstractKernel", "NNGP", "NTK", "RBF"]
