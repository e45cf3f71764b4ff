r"""Working-set coordinate descent for Lasso-type least squares on cross-validation
folds, and its support-restricted hypergradient (the engine of `bilevax.sklearn`).

Each fold `k` (a 0/1 training mask `m` over the `n` rows, `n_k = Σ m`) solves
scikit-learn's objective on its centred training rows,

$$\min_w \tfrac{1}{2 n_k} \|m ∘ (t - \bar t - (X - \bar x) w)\|^2
    + Σ_j λ_{1j} |w_j| + \tfrac12 Σ_j λ_{2j} w_j^2 ,$$

the way sparse-ho and celer do (Bertrand et al., ICML 2020; Massias, Gramfort,
Salmon, ICML 2018): an outer loop checks the optimality conditions on all `p`
coordinates (one product `Xᵀ r`), keeps a working set `W` of `K` coordinates (the
support, then the worst violators), and solves the problem restricted to `W` by
cyclic coordinate descent on its `K × K` Gram matrix. Solves are warm-started from
the previous `λ`, so the support is usually found at the first check.

At a solution with support `S` the conditions `G_SS w_S - b_S + λ₁ s + λ₂ w_S = 0`
(`s = sign(w_S)`) give `(G_SS + diag λ₂) dw_S = -(s dλ₁ + w_S dλ₂)`; the
hypergradient of a validation loss `V(w)` is therefore
`dV/dλ₁ = -q ∘ s`, `dV/dλ₂ = -q ∘ w_S` with `(G_SS + diag λ₂) q = ∇_S V`: an
`|S| × |S|` system (Bertrand et al.'s implicit differentiation on the support).
"""

import jax
import jax.numpy as jnp


def _fold_means(X, t, m):
    count = jnp.sum(m)
    return count, (m @ X) / count, (m @ t) / count


def _violation(grad, w, lam1):
    """Distance of `-grad` to the subdifferential of `λ₁|w|` (per coordinate)."""
    on = jnp.abs(grad + lam1 * jnp.sign(w))
    off = jnp.maximum(jnp.abs(grad) - lam1, 0.0)
    return jnp.where(w != 0, on, off)


def _full_gradient(X, t, m, w, lam2, means):
    """`∇` of the smooth part on all `p` coordinates (`Σ r = 0` after centring)."""
    count, x_mean, t_mean = means
    r = m * (t - t_mean - X @ w + x_mean @ w)
    return -(X.T @ r) / count + lam2 * w


def _gram(X, t, m, idx, means):
    count, x_mean, t_mean = means
    Z = m[:, None] * (X[:, idx] - x_mean[idx])
    return Z.T @ Z / count, Z.T @ (t - t_mean) / count


def _epoch(u, Gu, G, b, lam1, lam2):
    """One cyclic pass of coordinate descent on `½uᵀGu - bᵀu + λ₁|u| + λ₂/2 u²`."""

    def body(j, carry):
        u, Gu = carry
        h = G[j, j] + lam2[j]
        v = G[j, j] * u[j] - (Gu[j] - b[j])
        new = jnp.sign(v) * jnp.maximum(jnp.abs(v) - lam1[j], 0.0)
        new = jnp.where(h > 0, new / jnp.where(h > 0, h, 1.0), 0.0)
        return u.at[j].set(new), Gu + G[:, j] * (new - u[j])

    return jax.lax.fori_loop(0, u.shape[0], body, (u, Gu))


def _newton(G, b, u, lam1, lam2):
    """The exact solution if the support and signs of `u` are right:
    `(G_SS + diag λ₂) u_S = b_S - λ₁ sign(u_S)`, zero elsewhere."""
    on = u != 0
    eye = jnp.eye(u.shape[0], dtype=G.dtype)
    A = jnp.where(on[:, None] & on[None, :], G + jnp.diag(lam2), eye)
    candidate = jnp.linalg.solve(A, jnp.where(on, b - lam1 * jnp.sign(u), 0.0))
    return jnp.where(on, candidate, 0.0)


def _subproblem(G, b, u, lam1, lam2, tol, max_rounds, epochs=5):
    """Rounds of `epochs` coordinate-descent passes, each followed by a Newton
    step on the support found (kept if it keeps the signs and is more optimal):
    coordinate descent finds the support fast but converges slowly on it when
    `G_SS` is ill-conditioned (`|S|` near the number of rows)."""
    violation = lambda u, Gu: jnp.max(_violation(Gu - b + lam2 * u, u, lam1))

    def cond(carry):
        _, _, viol, k = carry
        return (viol > tol) & (k < max_rounds)

    def body(carry):
        u, Gu, _, k = carry
        u, Gu = jax.lax.fori_loop(
            0, epochs, lambda _, c: _epoch(*c, G, b, lam1, lam2), (u, Gu)
        )
        cand = _newton(G, b, u, lam1, lam2)
        Gc = G @ cand
        viol, viol_cand = violation(u, Gu), violation(cand, Gc)
        better = jnp.all(jnp.sign(cand) == jnp.sign(u)) & (viol_cand < viol)
        pick = lambda a, c: jnp.where(better, a, c)
        return pick(cand, u), pick(Gc, Gu), pick(viol_cand, viol), k + 1

    start = (u, G @ u, jnp.asarray(jnp.inf, u.dtype), 0)
    return jax.lax.while_loop(cond, body, start)[0]


def solve_fold(X, t, m, w, lam1, lam2, tol, size, max_outer=100, max_rounds=1000):
    """Working-set coordinate descent on one fold from `w`; `lam1`, `lam2` are
    `(p,)`. Returns `(w, violation)`, the final optimality violation."""
    means = _fold_means(X, t, m)

    def check(w):
        return _violation(_full_gradient(X, t, m, w, lam2, means), w, lam1)

    def cond(carry):
        _, viol, k = carry
        return (jnp.max(viol) > tol) & (k < max_outer)

    def body(carry):
        w, viol, k = carry
        idx = jax.lax.top_k(jnp.where(w != 0, jnp.inf, viol), size)[1]
        G, b = _gram(X, t, m, idx, means)
        u = _subproblem(G, b, w[idx], lam1[idx], lam2[idx], tol / 2, max_rounds)
        w = jnp.zeros_like(w).at[idx].set(u)
        return w, check(w), k + 1

    w, viol, _ = jax.lax.while_loop(cond, body, (w, check(w), 0))
    return w, jnp.max(viol)


def support_cotangents(X, t, m, w, lam2, grad_v, size):
    """`(dV/dλ₁, dV/dλ₂)` (each `(p,)`) at the solution `w` of one fold, given
    `grad_v = ∇_w V`, by the `|S| × |S|` system on the support (module docstring).
    The support is assumed to have at most `size` coordinates."""
    means = _fold_means(X, t, m)
    (idx,) = jnp.nonzero(w != 0, size=size, fill_value=0)
    valid = jnp.arange(size) < jnp.sum(w != 0)
    G, _ = _gram(X, t, m, idx, means)
    both = valid[:, None] & valid[None, :]
    A = jnp.where(both, G + jnp.diag(lam2[idx]), jnp.eye(size, dtype=G.dtype))
    q = jnp.linalg.solve(A, jnp.where(valid, grad_v[idx], 0.0))
    q = jnp.where(valid, q, 0.0)
    scatter = lambda a: jnp.zeros_like(w).at[idx].add(a)
    return scatter(-q * jnp.sign(w[idx])), scatter(-q * w[idx])
