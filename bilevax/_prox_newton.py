r"""Proximal Newton for L1-penalised logistic regression on cross-validation folds,
and its support-restricted hypergradient (the classification engine of
`bilevax.sklearn`).

Each fold `k` (a 0/1 training mask `m` over the `n` rows, `n_k = Σ m`, labels
`t ∈ {-1, 1}`) solves scikit-learn's objective `‖w‖₁ + C Σ_i log(1 + e^{-t_i z_i})`,
`z = X w + b`, divided by `C n_k`:

$$\min_{w, b}\ f(w, b) + λ ‖w‖₁, \quad
    f = \tfrac{1}{n_k} Σ_i m_i \log(1 + e^{-t_i z_i}), \quad λ = \tfrac{1}{C n_k}.$$

The intercept `b` is the last coordinate of the augmented design `[X, 1]`, with
no penalty (`λ_b = 0`, as scikit-learn's saga solver; liblinear penalises it).

Proximal Newton (Lee, Sun, Saunders, "Proximal Newton-type methods for minimizing
composite functions", SIAM J. Optim. 2014; the newGLMNET scheme of Yuan, Ho, Lin,
JMLR 2012): at `w`, the model `f + ∇fᵀ(u - w) + ½(u - w)ᵀH(u - w) + λ‖u‖₁`,
`H = Xᵀ diag(σ(z)σ(-z)) X / n_k` on a working set (the support, the intercept,
then the worst violators of the optimality conditions), is minimised by
coordinate descent with Newton steps on its support
(`_working_set._subproblem`); the step to its minimiser is backtracked until
`F(w + s d) ≤ F(w) + 10⁻⁴ s Δ`, `Δ = ∇fᵀd + λ(‖w + d‖₁ - ‖w‖₁)`. Near the
solution unit steps are taken and convergence is quadratic.

At a solution with support `S` (intercept included) `∇_S f + λ s_S = 0`
(`s = sign w`, `0` for the intercept); differentiating, `H_SS dw_S = -s_S dλ`, so
the hypergradient of a validation loss `V(w)` is `dV/dλ = -qᵀ s_S` with
`H_SS q = ∇_S V`: an `|S| × |S|` system (Bertrand et al., "Implicit
differentiation for fast hyperparameter selection in non-smooth convex learning",
JMLR 2022).
"""

import jax
import jax.numpy as jnp

from ._working_set import _subproblem, _violation


def _loss(Xa, t, m, w):
    """Mean training log-loss `f`."""
    return jnp.sum(m * jnp.logaddexp(0.0, -t * (Xa @ w))) / jnp.sum(m)


def _gradient(Xa, t, m, w):
    return -(Xa.T @ (m * t * jax.nn.sigmoid(-t * (Xa @ w)))) / jnp.sum(m)


def _hessian(Xa, t, m, w, idx):
    """`H` on the coordinates `idx`."""
    z = Xa @ w
    d = m * jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)
    Z = Xa[:, idx]
    return (Z.T * d) @ Z / jnp.sum(m)


def _newton_direction(Xa, t, m, w, lam1, tol, size):
    """`(d, Δ)`: the step to the working-set model's minimiser and its predicted
    decrease `Δ` (module docstring). The model is solved to a violation of a tenth
    of the current one (an inexact proximal Newton step), or `tol / 2`."""
    grad = _gradient(Xa, t, m, w)
    violation = _violation(grad, w, lam1)
    keep = (w != 0) | (lam1 == 0)
    idx = jax.lax.top_k(jnp.where(keep, jnp.inf, violation), size)[1]
    H = _hessian(Xa, t, m, w, idx)
    b = H @ w[idx] - grad[idx]
    sub_tol = jnp.maximum(tol / 2, 0.1 * jnp.max(violation))
    u = _subproblem(H, b, w[idx], lam1[idx], jnp.zeros_like(b), sub_tol, 100)
    d = jnp.zeros_like(w).at[idx].set(u - w[idx])
    delta = grad @ d + jnp.sum(lam1 * (jnp.abs(w + d) - jnp.abs(w)))
    return d, delta


def _line_search(Xa, t, m, w, lam1, d, delta):
    """The largest `s ∈ {1, ½, ¼, …}` with sufficient decrease (Armijo), up to the
    rounding error of `F` (near the solution the predicted decrease `Δ`, of the
    order of the squared violation, is below it)."""
    F = lambda v: _loss(Xa, t, m, v) + jnp.sum(lam1 * jnp.abs(v))
    F0 = F(w)
    slack = 10 * jnp.finfo(w.dtype).eps * jnp.abs(F0)

    def cond(s):
        return (F(w + s * d) > F0 + 1e-4 * s * delta + slack) & (s > 1e-10)

    return jax.lax.while_loop(cond, lambda s: s / 2, jnp.ones((), w.dtype))


def solve_fold(Xa, t, m, w, lam1, tol, size, max_outer=100):
    """Proximal Newton on one fold from `w` (`(p + 1,)`, intercept last); `lam1` is
    `(p + 1,)` with `0` for the intercept. Returns `(w, violation)`, the final
    optimality violation (largest distance of `-∇f` to the subdifferential)."""

    def check(w):
        return jnp.max(_violation(_gradient(Xa, t, m, w), w, lam1))

    def cond(carry):
        _, viol, k = carry
        return (viol > tol) & (k < max_outer)

    def body(carry):
        w, _, k = carry
        d, delta = _newton_direction(Xa, t, m, w, lam1, tol, size)
        w = w + _line_search(Xa, t, m, w, lam1, d, delta) * d
        return w, check(w), k + 1

    w, viol, _ = jax.lax.while_loop(cond, body, (w, check(w), 0))
    return w, viol


def support_cotangent(Xa, t, m, w, lam1, grad_v, size):
    """`dV/dλ` per coordinate (`(p + 1,)`) at the solution `w` of one fold, given
    `grad_v = ∇_w V`, by the `|S| × |S|` system on the support (module docstring).
    The support has at most `size` coordinates."""
    active = (w != 0) | (lam1 == 0)
    (idx,) = jnp.nonzero(active, size=size, fill_value=0)
    valid = jnp.arange(size) < jnp.sum(active)
    H = _hessian(Xa, t, m, w, idx)
    both = valid[:, None] & valid[None, :]
    A = jnp.where(both, H, jnp.eye(size, dtype=H.dtype))
    q = jnp.where(valid, jnp.linalg.solve(A, jnp.where(valid, grad_v[idx], 0.0)), 0.0)
    return jnp.zeros_like(w).at[idx].add(-q * jnp.sign(w[idx]))
