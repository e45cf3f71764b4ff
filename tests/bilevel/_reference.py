"""Plain NumPy transcriptions of the algorithm boxes of the stochastic bilevel
methods, on a small finite-sum quadratic with per-sample Hessians:

    φ_i(x, y) = ½ (w_i·y)² + ½ λ‖y‖² + ½ (u_i·x)² + (p_i·x)(q_i·y) + a_i·y + b_i·x,

g the mean over the inner samples, f over the outer ones. The minibatch indices
are drawn with the same `jax.random` calls as the implementation (documented in
each method's code), so that both see the same batches.
"""

import jax
import jax.numpy as jnp
import numpy as np

import bilevax as bx


class SampledQuadratic:
    def __init__(self, n=12, m=10, dx=3, dy=4, lam=0.5, seed=0):
        rng = np.random.default_rng(seed)
        self.lam = lam
        self.levels = [
            {
                k: rng.normal(size=(size, d)) * 0.7
                for k, d in dict(w=dy, u=dx, p=dx, q=dy, a=dy, b=dx).items()
            }
            for size in (n, m)
        ]
        self.data = tuple(
            {k: jnp.asarray(v) for k, v in s.items()} for s in self.levels
        )
        self.x0 = jnp.asarray(rng.normal(size=dx))
        self.y0 = jnp.asarray(rng.normal(size=dy))

        def phi(x, y, s):
            return (
                jnp.mean(
                    0.5 * (s["w"] @ y) ** 2
                    + 0.5 * (s["u"] @ x) ** 2
                    + (s["p"] @ x) * (s["q"] @ y)
                    + s["a"] @ y
                    + s["b"] @ x
                )
                + 0.5 * lam * y @ y
            )

        self.problem = bx.bilevel.BilevelProblem(outer=phi, inner=phi)

    # NumPy oracles on the samples `idx` of a level (0: inner, 1: outer)
    def grad_y(self, level, idx, x, y):
        s = {k: v[idx] for k, v in self.levels[level].items()}
        per = s["w"] * (s["w"] @ y)[:, None] + s["q"] * (s["p"] @ x)[:, None] + s["a"]
        return per + self.lam * y

    def grad_x(self, level, idx, x, y):
        s = {k: v[idx] for k, v in self.levels[level].items()}
        return s["u"] * (s["u"] @ x)[:, None] + s["p"] * (s["q"] @ y)[:, None] + s["b"]

    def hvp(self, idx, v):
        w = self.levels[0]["w"][idx]
        return w * (w @ v)[:, None] + self.lam * v

    def cross(self, idx, v):
        s = {k: a[idx] for k, a in self.levels[0].items()}
        return s["p"] * (s["q"] @ v)[:, None]


def np_(a):
    return np.asarray(a, np.float64)


def _randint(key, b, n):
    return np.asarray(jax.random.randint(key, (b,), 0, n))


def soba_indices(key, b, n, m):
    """SOBA's batches: `∇_y g` on B₁, the HVP and cross product on B₂, `∇f` on B₃."""
    k1, k2, k3 = jax.random.split(key, 3)
    return _randint(k1, b, n), _randint(k2, b, n), _randint(k3, b, m)


def soba_step(P, x, y, v, rho, gamma, key, b):
    """Algorithm 1 of Dagréou et al. (2022), at the old point."""
    n, m = len(P.levels[0]["w"]), len(P.levels[1]["w"])
    i1, i2, j = soba_indices(key, b, n, m)
    d_y = P.grad_y(0, i1, x, y).mean(0)
    d_v = P.hvp(i2, v).mean(0) + P.grad_y(1, j, x, y).mean(0)
    d_x = P.grad_x(1, j, x, y).mean(0) + P.cross(i2, v).mean(0)
    return x - gamma * d_x, y - rho * d_y, v - rho * d_v, d_x


def ma_soba_step(P, x, y, v, h, rho, gamma, theta, radius, key, b):
    """Algorithm of Chen, Xu, Zhang (2023): SOBA directions, moving average of the
    x direction, adjoint projected on the ball of radius `radius`."""
    _, y_new, v_new, d_x = soba_step(P, x, y, v, rho, gamma, key, b)
    v_new = v_new * min(1.0, radius / np.linalg.norm(v_new))
    h = (1 - theta) * h + theta * d_x
    return x - gamma * h, y_new, v_new, h


class SabaMemory:
    def __init__(self, n, m, dx, dy):
        self.gy, self.hv, self.cv = (
            np.zeros((n, dy)),
            np.zeros((n, dy)),
            np.zeros((n, dx)),
        )
        self.fx, self.fy = np.zeros((m, dx)), np.zeros((m, dy))


def saba_step(P, x, y, v, mem, rho, gamma, key, b):
    """Algorithm 2 of Dagréou et al. (2022): SAGA estimates of the five
    quantities (memory updated in place)."""
    n, m = len(P.levels[0]["w"]), len(P.levels[1]["w"])
    k_in, k_out = jax.random.split(key)
    i, j = _randint(k_in, b, n), _randint(k_out, b, m)

    def saga(new, table, idx):
        est = (new - table[idx]).mean(0) + table.mean(0)
        for r, row in zip(idx, new, strict=True):
            table[r] = row
        return est

    gy = saga(P.grad_y(0, i, x, y), mem.gy, i)
    hv = saga(P.hvp(i, v), mem.hv, i)
    cv = saga(P.cross(i, v), mem.cv, i)
    fx = saga(P.grad_x(1, j, x, y), mem.fx, j)
    fy = saga(P.grad_y(1, j, x, y), mem.fy, j)
    return x - gamma * (fx + cv), y - rho * gy, v - rho * (hv + fy)


def bome_step(P, x, y, alpha, xi, eta, T, key, b):
    """Algorithm 1 of Liu et al. (2022): ŷ by T gradient steps on the inner batch,
    then the dynamic-barrier step on (x, y)."""
    n, m = len(P.levels[0]["w"]), len(P.levels[1]["w"])
    k_g, k_f = jax.random.split(key)
    i, j = _randint(k_g, b, n), _randint(k_f, b, m)
    y_hat = y.copy()
    for _ in range(T):
        y_hat = y_hat - alpha * P.grad_y(0, i, x, y_hat).mean(0)
    q_x = P.grad_x(0, i, x, y).mean(0) - P.grad_x(0, i, x, y_hat).mean(0)
    q_y = P.grad_y(0, i, x, y).mean(0)
    f_x, f_y = P.grad_x(1, j, x, y).mean(0), P.grad_y(1, j, x, y).mean(0)
    norm2 = q_x @ q_x + q_y @ q_y
    lam = max(eta * norm2 - (f_x @ q_x + f_y @ q_y), 0.0) / norm2
    return x - xi * (f_x + lam * q_x), y - xi * (f_y + lam * q_y)


def maid_step(Q, x, y, s, cfg):
    """Algorithm of Salehi et al. (MAID) on `tests/bilevel/_quadratic.Quadratic`:
    inexact inner solve (gradient descent to ‖∇_y g‖ <= ε s), adjoint (solved
    exactly here: the implementation's CG runs to relative residual ε, tiny in
    the test), backtracking with the inexact sufficient decrease, then the
    accuracy update. `s` is a dict with eps, trial, scale, lip_g, mu_g, lip_f and the
    number of consecutive failures."""
    H, B, c, y_t, mu = (np_(a) for a in (Q.H, Q.B, Q.c, Q.y_t, Q.mu))
    e_bar, eps_bar = (np_(a).mean(0) for a in Q.data)
    grad = lambda x, y: H @ y - (B @ x + c + e_bar)
    tol = s["eps"] * s["scale"]

    def solve(x, y):
        gr, k = grad(x, y), 0
        while k < cfg["inner_steps"] and np.linalg.norm(gr) > tol:
            y, k = y - (1.0 / s["lip_g"]) * gr, k + 1
            gr = grad(x, y)
        return y

    def value_error(x, y):
        r = y - y_t - eps_bar
        e = s["eps"] * s["scale"] / s["mu_g"]
        return 0.5 * r @ r + 0.5 * mu * x @ x, np.linalg.norm(r) * e + 0.5 * s[
            "lip_f"
        ] * e**2

    y = solve(x, y)
    p = mu * x + B.T @ np.linalg.solve(H, y - y_t - eps_bar)
    value, omega = value_error(x, y)
    for j in range(cfg["max_backtracks"] * (1 + s["failures"])):
        alpha = s["trial"] * cfg["backtrack"] ** j
        x_new = x - alpha * p
        y_new = solve(x_new, y)
        v_new, o_new = value_error(x_new, y_new)
        if v_new + o_new <= value - omega - cfg["eta"] * alpha * (p @ p):
            eps = min(cfg["loosen"] * s["eps"], cfg["eps0"])
            s = dict(s, eps=eps, trial=alpha * cfg["growth"], failures=0)
            return x_new, y_new, s, p
    eps = max(cfg["tighten"] * s["eps"], cfg["eps_min"])
    return x, y, dict(s, eps=eps, failures=s["failures"] + 1), p


def bo_rep_step(P, x, y, v, m, t, c, key, b):
    """Algorithm 1 of Hao, Gong, Liu (2024) after the initialisation refinement:
    periodic SGD on y, projected SGD on the adjoint, normalised momentum on x.
    `c`: dict with rho, eta, radius, beta, decay, period, steps."""
    n, mm = len(P.levels[0]["w"]), len(P.levels[1]["w"])
    k_y, k_g, k_f = jax.random.split(key, 3)
    if t % c["period"] == 0 and t > 0:
        for k in jax.random.split(k_y, c["steps"]):
            y = y - c["rho"] * P.grad_y(0, _randint(k, b, n), x, y).mean(0)
    i, j = _randint(k_g, b, n), _randint(k_f, b, mm)
    d_v = P.hvp(i, v).mean(0) + P.grad_y(1, j, x, y).mean(0)
    d_x = P.grad_x(1, j, x, y).mean(0) + P.cross(i, v).mean(0)
    v = v - c["rho"] * d_v
    v = v * min(1.0, c["radius"] / np.linalg.norm(v))
    m = c["beta"] * m + (1 - c["beta"]) * d_x
    eta = c["eta"] * c["decay"] ** t
    return x - eta * m / np.linalg.norm(m), y, v, m
