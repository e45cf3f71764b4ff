r"""The classical augmented-Lagrangian method (Powell-Hestenes-Rockafellar) for
equality, inequality and bound constraints, with the safeguarded updates of
Conn-Gould-Toint / ALGENCAN (Birgin & Martínez 2014, "Practical augmented
Lagrangian methods for constrained optimization", Algorithm 4.1).

For `min f(y)` s.t. `c(y) = 0`, `h(y) <= 0`, `l <= y <= u`, outer iteration `k`

1. minimises, over the box only, the augmented Lagrangian

       L_ρ(y) = f + λᵀc + ρ/2 ‖c‖² + 1/(2ρ) Σ_i (max(0, μ_i + ρ h_i)² − μ_i²)

   to a projected-gradient accuracy `ω_k` (`ω_k = max(tol, ω_{k-1}/10)`);
2. updates `λ ← λ + ρ c`, `μ ← max(0, μ + ρ h)` (clipped to `±multiplier_bound`),
   so that `∇L_ρ(y) = ∇_y L(y, λ, μ)`;
3. multiplies `ρ` by `rho_growth` when the infeasibility-complementarity measure
   `V = max(‖c‖∞, ‖max(h, −μ/ρ)‖∞)` is above `tol` and did not fall below `tau`
   times its last value;
4. stops when stationarity (projected on the box), feasibility and complementarity
   are all `<= tol`, and declares the problem infeasible when `ρ` exceeds `rho_max`
   while the constraints are still violated.

As ALGENCAN does, the method runs on the scaled problem `s_f f`, `s_c,i c_i`,
`s_h,i h_i` with `s_f = 1/max(1, ‖∇f(y0)‖∞)` and `s_i = 1/max(1, ‖∇c_i(y0)‖∞)`,
so that `tol` is relative to the problem's magnitudes (the multipliers are
returned unscaled); an inner solve also ends when its steps no longer move `y`
beyond the round-off of the dtype, so that float32 solves stop at the accuracy
float32 allows instead of running out of steps.

The inner solver is a projected Newton method (Bertsekas 1982) on the box: exact
Hessian of `L_ρ` by autodiff on the free variables, eigenvalues replaced by their
absolute values (floored) where it is indefinite, Armijo search along the
projection arc. Without bounds, any optimistix minimiser can be used instead.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, PRNGKeyArray

from ._base import AbstractConstrainedSolver
from ._linesearch import backtrack
from ._problem import RESULTS, FlatProblem


def _project(y, lower, upper):
    return jnp.clip(y, lower, upper)


def _projected_gradient(y, g, lower, upper):
    """`‖y − P(y − g)‖∞`: zero exactly at the box's first-order points."""
    return jnp.max(jnp.abs(y - _project(y - g, lower, upper)), initial=0.0)


class _NewtonState(eqx.Module):
    y: Array
    value: Array
    grad: Array
    step: Array
    done: Array  # a failed line search or a step below round-off


def _newton_direction(hessian, y, g, lower, upper):
    """The projected Newton direction: the exact Hessian on the free variables
    (eigenvalues by absolute value, floored), the gradient on the active ones."""
    n = y.shape[0]
    eps = jnp.minimum(1e-3, _projected_gradient(y, g, lower, upper))
    active = ((y <= lower + eps) & (g > 0)) | ((y >= upper - eps) & (g < 0))
    free = ~active
    H = hessian(y)
    H = jnp.where(free[:, None] & free[None, :], H, jnp.eye(n, dtype=y.dtype))
    evals, evecs = jnp.linalg.eigh(H)
    floor = 1e-8 * jnp.maximum(1.0, jnp.max(jnp.abs(evals)))
    evals = jnp.maximum(jnp.abs(evals), floor)
    return -(evecs @ ((evecs.T @ g) / evals))


def _projected_newton(fn, y0, lower, upper, tol, max_steps):
    """Minimise `fn` over `lower <= y <= upper` from `y0` (inside the box) until the
    projected gradient is `<= tol`, the line search fails or the steps stop moving
    `y` (round-off); returns `(y, steps)`."""
    value_and_grad = jax.value_and_grad(fn)
    hessian = jax.hessian(fn)
    eps = jnp.finfo(y0.dtype).eps

    def cond(s: _NewtonState):
        pg = _projected_gradient(s.y, s.grad, lower, upper)
        return (s.step < max_steps) & (pg > tol) & jnp.isfinite(s.value) & ~s.done

    def body(s: _NewtonState):
        y, g = s.y, s.grad
        d = _newton_direction(hessian, y, g, lower, upper)
        # a round-off slack lets the last Newton steps through: near a minimiser
        # the decrease is below the precision of `fn`
        slack = 10 * eps * jnp.abs(s.value)

        def accept(alpha):
            trial = _project(y + alpha * d, lower, upper)
            value = fn(trial)
            return value <= s.value + 1e-4 * g @ (trial - y) + slack, (trial, value)

        _, ok, (y_new, _) = backtrack(accept, y.dtype, min_step=1e-14)
        value, grad = value_and_grad(y_new)
        moved = jnp.max(jnp.abs(y_new - y)) > 10 * eps * jnp.maximum(
            1.0, jnp.max(jnp.abs(y))
        )
        # a failed line search leaves y as it is: no progress is possible
        return _NewtonState(
            jnp.where(ok, y_new, y),
            jnp.where(ok, value, s.value),
            jnp.where(ok, grad, g),
            s.step + 1,
            ~ok | ~moved,
        )

    value, grad = value_and_grad(y0)
    init = _NewtonState(y0, value, grad, jnp.array(0), jnp.array(False))
    s = jax.lax.while_loop(cond, body, init)
    return s.y, s.step


class _State(eqx.Module):
    y: Array
    lam: Array
    mu: Array
    rho: Array
    omega: Array
    infeasibility: Array
    kkt: Array
    stop: Array  # the KKT residual with stationarity relative to round-off
    inner_steps: Array
    scales: tuple[Array, Array, Array]  # s_f, s_c, s_h of the scaled problem


class AugmentedLagrangian(AbstractConstrainedSolver):
    """Safeguarded augmented-Lagrangian method for equality, inequality and bound
    constraints (see the module docs for the updates).

    **Arguments:**

    - `tol` (`None`): stationarity, feasibility and complementarity of the scaled
      problem (module docs), all measured in the max-norm, at which to stop; by
      default 1e-8 in float64 and 1e-5 in float32.
    - `max_steps` (50): outer iterations; `inner_max_steps` (200) per inner solve.
    - `rho` (`None`): initial penalty; by default ALGENCAN's scale-aware choice
      `10 max(1, |f(y0)|) / max(1, ‖c(y0)‖²/2 + ‖max(h(y0), 0)‖²/2)` clipped to
      `[1e-8, 1e8]`.
    - `rho_growth` (10), `tau` (0.5): penalty increase when the infeasibility did
      not fall below `tau` times its last value.
    - `rho_max` (1e12): past it, a still infeasible iterate ends the solve with
      `RESULTS.infeasible`.
    - `multiplier_bound` (1e20): safeguard on the multiplier estimates.
    - `inner_solver` (`None`): `None` uses projected Newton with the exact Hessian
      (dense, `O(n³)` per inner step, any bounds); an `optimistix` minimiser such
      as `optx.BFGS(rtol, atol)` (problems without bounds only) solves each
      subproblem to its own tolerance instead.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.solvers.ConstrainedProblem(
    ...     objective=lambda y, a: jnp.sum((y - a) ** 2),
    ...     ineq=lambda y, a: jnp.array([jnp.sum(y) - 1.0]),
    ... )
    >>> solver = bx.solvers.AugmentedLagrangian()
    >>> solve = lambda a: bx.solvers.minimize(problem, jnp.zeros(2), a, solver).y
    >>> print(solve(jnp.array([1.0, 2.0])).round(3) + 0.0)
    [0. 1.]
    >>> print(jax.jacobian(solve)(jnp.array([1.0, 2.0])).round(3))  # through the KKT
    [[ 0.5 -0.5]
     [-0.5  0.5]]

    ```
    """

    tol: float | None = None
    max_steps: int = 50
    inner_max_steps: int = 200
    rho: float | None = None
    rho_growth: float = 10.0
    tau: float = 0.5
    rho_max: float = 1e12
    multiplier_bound: float = 1e20
    inner_solver: optx.AbstractMinimiser | None = None

    def _tol(self, dtype) -> float:
        if self.tol is not None:
            return self.tol
        return 1e-8 if jnp.finfo(dtype).bits == 64 else 1e-5

    def init(self, problem: FlatProblem, y, key: PRNGKeyArray) -> _State:
        del key  # deterministic
        if problem.has_bounds and self.inner_solver is not None:
            raise ValueError(
                "An optimistix `inner_solver` cannot handle bounds; leave "
                "`inner_solver=None` (projected Newton) for bound constraints."
            )
        scaled = _Scaled.build(problem, y)
        y, tol = _project(y, problem.lower, problem.upper), self._tol(y.dtype)
        dtype = y.dtype
        lam0, mu0 = jnp.zeros(problem.m, dtype), jnp.zeros(problem.p, dtype)
        c0, h0 = scaled.c(y), scaled.h(y)
        if self.rho is None:
            violated = jnp.maximum(h0, 0.0)
            rho0 = jnp.clip(
                10.0
                * jnp.maximum(1.0, jnp.abs(scaled.f(y)))
                / jnp.maximum(1.0, 0.5 * (c0 @ c0 + violated @ violated)),
                1e-8,
                1e8,
            )
        else:
            rho0 = jnp.asarray(self.rho, dtype)
        V0, kkt0, stop0 = scaled.measures(y, c0, h0, lam0, mu0, mu0, rho0, tol)
        omega0 = jnp.maximum(jnp.asarray(tol, dtype), jnp.sqrt(tol))
        rho0 = rho0.astype(dtype)
        return _State(
            y, lam0, mu0, rho0, omega0, V0, kkt0, stop0, jnp.array(0), scaled.scales
        )

    def _inner(self, scaled: "_Scaled", s: _State):
        fn = lambda z: scaled.augmented(z, s.lam, s.mu, s.rho)
        if self.inner_solver is None:
            lower, upper = scaled.flat.lower, scaled.flat.upper
            return _projected_newton(
                fn, s.y, lower, upper, s.omega, self.inner_max_steps
            )
        sol = optx.minimise(
            lambda z, _: fn(z),
            self.inner_solver,
            s.y,
            max_steps=self.inner_max_steps,
            throw=False,
        )
        return sol.value, sol.stats["num_steps"]

    def step(self, problem: FlatProblem, s: _State, key: PRNGKeyArray) -> _State:
        scaled, tol = _Scaled(problem, *s.scales), self._tol(s.y.dtype)
        y, used = self._inner(scaled, s)
        cy, hy = scaled.c(y), scaled.h(y)
        bound = self.multiplier_bound
        lam = jnp.clip(s.lam + s.rho * cy, -bound, bound)
        mu = jnp.clip(s.mu + s.rho * hy, 0.0, bound)
        V, kkt, stop = scaled.measures(y, cy, hy, lam, mu, s.mu, s.rho, tol)
        stalled = (V > self.tau * s.infeasibility) & (V > tol)
        rho = jnp.where(stalled, self.rho_growth, 1.0) * s.rho
        omega = jnp.maximum(tol, 0.1 * s.omega)
        inner_steps = s.inner_steps + used
        return _State(y, lam, mu, rho, omega, V, kkt, stop, inner_steps, s.scales)

    def terminate(self, problem: FlatProblem, s: _State):
        tol = self._tol(s.y.dtype)
        result = RESULTS.where(s.stop <= tol, RESULTS.successful, RESULTS.infeasible)
        infeasible = (s.rho > self.rho_max) & (s.infeasibility > tol)
        result = RESULTS.where(infeasible, RESULTS.infeasible, result)
        finite = jnp.isfinite(s.kkt) & jnp.isfinite(s.stop) & jnp.all(jnp.isfinite(s.y))
        finite = finite & jnp.isfinite(s.rho)
        finite = finite & jnp.isfinite(_Scaled(problem, *s.scales).f(s.y))
        result = RESULTS.where(finite, result, RESULTS.nonfinite)
        return (s.stop <= tol) | infeasible | ~finite, result

    def postprocess(self, problem: FlatProblem, s: _State, result: RESULTS):
        scaled = _Scaled(problem, *s.scales)
        s_f, s_c, s_h = s.scales
        multipliers = {}
        if problem.problem.eq is not None:
            multipliers["eq"] = _minimum_norm(problem.c, s.y, s.lam * s_c / s_f)
        if problem.problem.ineq is not None:
            multipliers["ineq"] = s.mu * s_h / s_f
        if problem.has_bounds:
            g = jax.grad(scaled.lagrangian)(s.y, s.lam, s.mu) / s_f
            y, lower, upper = s.y, problem.lower, problem.upper
            multipliers["lower"] = jnp.where(y <= lower, jnp.maximum(g, 0.0), 0.0)
            multipliers["upper"] = jnp.where(y >= upper, jnp.maximum(-g, 0.0), 0.0)
        stats = {"kkt_residual": s.kkt, "inner_steps": s.inner_steps, "rho": s.rho}
        return s.y, multipliers, stats


def _minimum_norm(c, y, lam):
    """The multipliers of least norm with the same `Gᵀλ` (`G = ∂c/∂y`): `λ`
    itself when `G` has full row rank, the minimum-norm ones for redundant
    constraints (whose multipliers are not unique)."""
    G = jax.jacfwd(c)(y)
    return jnp.linalg.pinv(G.T) @ (G.T @ lam)


def _scales(fn, y):
    """`1/max(1, ‖∇fn_i(y)‖∞)` per output of `fn` (ALGENCAN's scaling)."""
    jac = jnp.atleast_2d(jax.jacfwd(fn)(y))
    norms = jnp.max(jnp.abs(jac), axis=1, initial=0.0)
    scales = 1.0 / jnp.maximum(1.0, jnp.where(jnp.isfinite(norms), norms, 1.0))
    return jax.lax.stop_gradient(scales)


class _Scaled(eqx.Module):
    """The scaled problem `s_f f`, `s_c c`, `s_h h` on flat `y` (module docs)."""

    flat: FlatProblem
    s_f: Array
    s_c: Array
    s_h: Array

    @classmethod
    def build(cls, problem: FlatProblem, y) -> "_Scaled":
        y = _project(y, problem.lower, problem.upper)
        s_f = _scales(lambda z: problem.f(z)[None], y)[0]
        return cls(problem, s_f, _scales(problem.c, y), _scales(problem.h, y))

    @property
    def scales(self) -> tuple[Array, Array, Array]:
        return self.s_f, self.s_c, self.s_h

    def f(self, y):
        return self.s_f * self.flat.f(y)

    def c(self, y):
        return self.s_c * self.flat.c(y)

    def h(self, y):
        return self.s_h * self.flat.h(y)

    def lagrangian(self, y, lam, mu):
        return self.f(y) + lam @ self.c(y) + mu @ self.h(y)

    def augmented(self, y, lam, mu, rho):
        cy, hy = self.c(y), self.h(y)
        shifted = jnp.maximum(0.0, mu + rho * hy)
        penalty = 0.5 * rho * cy @ cy + (shifted @ shifted - mu @ mu) / (2 * rho)
        return self.f(y) + lam @ cy + penalty

    def measures(self, y, cy, hy, lam, mu, mu_old, rho, tol):
        """(V for the penalty test, the KKT residual, the residual the stopping
        test uses) at `y` (`cy = c(y)`, `hy = h(y)`). The stopping test allows
        stationarity down to the round-off of evaluating `∇L_ρ`, about `10 eps (1 +
        ‖λ‖∞ + ρ max(1, ‖y‖∞))`, which matters in float32 for large `ρ`."""
        hmax = lambda v: jnp.max(v, initial=0.0)
        shifted = jnp.abs(jnp.maximum(hy, -mu_old / rho))
        V = jnp.maximum(hmax(jnp.abs(cy)), hmax(shifted))
        grad = jax.grad(self.lagrangian)(y, lam, mu)
        stationarity = _projected_gradient(y, grad, self.flat.lower, self.flat.upper)
        feasibility = jnp.maximum(hmax(jnp.abs(cy)), hmax(jnp.maximum(hy, 0.0)))
        complementarity = hmax(jnp.abs(jnp.minimum(-hy, mu)))
        rest = jnp.maximum(feasibility, complementarity)
        eps = jnp.finfo(y.dtype).eps
        size = 1.0 + hmax(jnp.abs(lam)) + hmax(mu) + rho * jnp.maximum(1.0, hmax(y))
        attainable = stationarity / jnp.maximum(1.0, 10 * eps * size / tol)
        return V, jnp.maximum(stationarity, rest), jnp.maximum(attainable, rest)
