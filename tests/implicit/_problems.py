"""Test problems with closed-form solutions and hypergradients."""

import jax
import jax.numpy as jnp


class Ridge:
    """Ridge regression `min_w ½‖Xw - b‖² + ½ Σ_j exp(x_j) w_j²` with a validation
    loss `½‖X_v w - b_v‖²`; `x` is a scalar (one regularisation strength) or a
    vector (one per feature)."""

    def __init__(self, n=60, d=8, n_val=40, seed=0):
        k = jax.random.split(jax.random.key(seed), 4)
        self.X = jax.random.normal(k[0], (n, d))
        self.b = self.X @ jax.random.normal(k[1], (d,)) + 0.1 * jax.random.normal(
            k[2], (n,)
        )
        self.Xv = jax.random.normal(k[3], (n_val, d))
        self.bv = self.Xv @ jnp.ones(d)
        self.d = d

    def inner(self, w, x):
        return 0.5 * jnp.sum((self.X @ w - self.b) ** 2) + 0.5 * jnp.sum(
            jnp.exp(x) * w**2
        )

    def outer(self, w):
        return 0.5 * jnp.sum((self.Xv @ w - self.bv) ** 2)

    def system(self, x):
        return self.X.T @ self.X + jnp.diag(jnp.exp(x) * jnp.ones(self.d))

    def solve(self, init, x):
        """Exact inner solution; `init` is ignored."""
        return jnp.linalg.solve(self.system(x), self.X.T @ self.b)

    def hypergradient(self, x):
        r"""Closed form: with `A w* = Xᵀb`, `dL/dx_j = -e^{x_j} w*_j (A⁻¹∇L)_j`."""
        w = self.solve(None, x)
        v = jnp.linalg.solve(self.system(x), self.Xv.T @ (self.Xv @ w - self.bv))
        per_feature = -jnp.exp(x) * w * v
        return per_feature if jnp.ndim(x) else jnp.sum(per_feature)
