"""A synthetic quadratic bilevel problem with an exact hypergradient.

inner  g(x, y) = ½ yᵀHy - yᵀ(Bx + c + ē),  H SPD, ē the mean of the batch's noise;
outer  f(x, y) = ½‖y - y_t - ε̄‖² + μ/2 ‖x‖²,  ε̄ the mean of the batch's noise.

The noise samples average to zero over the whole data, so the full-batch problem is
the exact one: y*(x) = H⁻¹(Bx + c), ∇h(x) = BᵀH⁻¹(y* - y_t) + μx.
"""

import jax.numpy as jnp
import numpy as np

import bilevax as bx


class Quadratic:
    def __init__(self, dx=10, dy=50, n=512, mu=0.1, noise=1.0, seed=0):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(dy, dy)))
        self.H = jnp.asarray(q @ np.diag(np.linspace(0.5, 2.0, dy)) @ q.T)
        self.B = jnp.asarray(rng.normal(size=(dy, dx)) / np.sqrt(dy))
        self.c = jnp.asarray(rng.normal(size=dy))
        self.y_t = jnp.asarray(rng.normal(size=dy))
        self.mu = mu
        e = rng.normal(size=(n, dy)) * noise
        eps = rng.normal(size=(n, dy)) * noise
        self.data = (jnp.asarray(e - e.mean(0)), jnp.asarray(eps - eps.mean(0)))
        self.x0 = jnp.ones(dx)
        self.y0 = jnp.zeros(dy)
        H, B, c, y_t = self.H, self.B, self.c, self.y_t

        def inner(x, y, e):
            return 0.5 * y @ H @ y - y @ (B @ x + c + jnp.mean(e, axis=0))

        def outer(x, y, eps):
            r = y - y_t - jnp.mean(eps, axis=0)
            return 0.5 * r @ r + 0.5 * mu * x @ x

        self.problem = bx.bilevel.BilevelProblem(outer=outer, inner=inner)
        self.hessian_h = B.T @ jnp.linalg.solve(H, jnp.linalg.solve(H, B))
        self.hessian_h = self.hessian_h + mu * jnp.eye(dx)
        self.lipschitz_h = float(jnp.linalg.eigvalsh(self.hessian_h)[-1])

    def y_star(self, x):
        return jnp.linalg.solve(self.H, self.B @ x + self.c)

    def grad_h(self, x):
        return (
            self.B.T @ jnp.linalg.solve(self.H, self.y_star(x) - self.y_t) + self.mu * x
        )

    def grad_norm_ratio(self, x):
        return float(
            jnp.linalg.norm(self.grad_h(x)) / jnp.linalg.norm(self.grad_h(self.x0))
        )
