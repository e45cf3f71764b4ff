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

The inner solver is a projected Newton method (Bertsekas 1982) on the box: exact
Hessian of `L_ρ` by autodiff on the free variables, eigenvalues replaced by their
absolute values (floored) where it is indefinite, Armijo search along the
projection arc. Without bounds, any optimistix minimiser can be used instead.
"""

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, PRNGKeyArray

from ._problem import RESULTS, ConstrainedProblem, ConstrainedSolution, flat_bounds


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


def _projected_newton(fn, y0, lower, upper, tol, max_steps):
    """Minimise `fn` over `lower <= y <= upper` from `y0` (inside the box) until the
    projected gradient is `<= tol`; returns `(y, steps)` (a failed line search
    ends the solve and counts as `max_steps`)."""
    n = y0.shape[0]
    value_and_grad = jax.value_and_grad(fn)
    hessian = jax.hessian(fn)

    def cond(s: _NewtonState):
        pg = _projected_gradient(s.y, s.grad, lower, upper)
        return (s.step < max_steps) & (pg > tol) & jnp.isfinite(s.value)

    def body(s: _NewtonState):
        y, g = s.y, s.grad
        eps = jnp.minimum(1e-3, _projected_gradient(y, g, lower, upper))
        active = ((y <= lower + eps) & (g > 0)) | ((y >= upper - eps) & (g < 0))
        free = ~active
        H = hessian(y)
        H = jnp.where(free[:, None] & free[None, :], H, jnp.eye(n, dtype=y.dtype))
        evals, evecs = jnp.linalg.eigh(H)
        floor = 1e-8 * jnp.maximum(1.0, jnp.max(jnp.abs(evals)))
        evals = jnp.maximum(jnp.abs(evals), floor)
        d = -(evecs @ ((evecs.T @ g) / evals))

        # a round-off slack lets the last Newton steps through: near a minimiser
        # the decrease is below the precision of `fn`
        slack = 10 * jnp.finfo(y.dtype).eps * jnp.abs(s.value)

        def fails(carry):
            alpha, trial_value, trial = carry
            decrease = s.value + 1e-4 * g @ (trial - y) + slack
            return ~(trial_value <= decrease) & (alpha > 1e-14)

        def halve(carry):
            alpha = 0.5 * carry[0]
            trial = _project(y + alpha * d, lower, upper)
            return alpha, fn(trial), trial

        first = _project(y + d, lower, upper)
        alpha, _, y_new = jax.lax.while_loop(
            fails, halve, (jnp.array(1.0, y.dtype), fn(first), first)
        )
        value, grad = value_and_grad(y_new)
        # a failed line search leaves y as it is: no progress is possible
        stuck = alpha <= 1e-14
        return _NewtonState(
            jnp.where(stuck, y, y_new),
            jnp.where(stuck, s.value, value),
            jnp.where(stuck, g, grad),
            jnp.where(stuck, max_steps, s.step + 1),
        )

    value, grad = value_and_grad(y0)
    s = jax.lax.while_loop(cond, body, _NewtonState(y0, value, grad, jnp.array(0)))
    return s.y, s.step


class _State(eqx.Module):
    y: Array
    lam: Array
    mu: Array
    rho: Array
    omega: Array
    infeasibility: Array
    kkt: Array
    step: Array
    inner_steps: Array


class AugmentedLagrangian(eqx.Module):
    """Safeguarded augmented-Lagrangian method for equality, inequality and bound
    constraints (see the module docs for the updates).

    **Arguments:**

    - `tol` (`None`): stationarity, feasibility and complementarity, all measured
      in the max-norm, at which to stop; by default 1e-8 in float64 and 1e-5 in
      float32.
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

    def run(
        self, problem: ConstrainedProblem, y0, args, key: PRNGKeyArray
    ) -> ConstrainedSolution:
        del key  # deterministic
        y0_flat, unravel = jfu.ravel_pytree(y0)
        dtype = y0_flat.dtype
        if self.tol is not None:
            tol = self.tol
        else:
            tol = 1e-8 if jnp.finfo(dtype).bits == 64 else 1e-5
        lower, upper = flat_bounds(problem, y0_flat, unravel)
        if problem.bounds is not None and self.inner_solver is not None:
            raise ValueError(
                "An optimistix `inner_solver` cannot handle bounds; leave "
                "`inner_solver=None` (projected Newton) for bound constraints."
            )
        empty = lambda y: jnp.zeros(0, dtype)
        f = lambda y: problem.objective(unravel(y), args)
        c = empty if problem.eq is None else lambda y: problem.eq(unravel(y), args)
        h = empty if problem.ineq is None else lambda y: problem.ineq(unravel(y), args)
        y_start = _project(y0_flat, lower, upper)
        m = jax.eval_shape(c, y_start).shape[0]
        p = jax.eval_shape(h, y_start).shape[0]

        def lagrangian(y, lam, mu):
            return f(y) + lam @ c(y) + mu @ h(y)

        def augmented(y, lam, mu, rho):
            cy, hy = c(y), h(y)
            shifted = jnp.maximum(0.0, mu + rho * hy)
            return (
                f(y)
                + lam @ cy
                + 0.5 * rho * cy @ cy
                + (shifted @ shifted - mu @ mu) / (2 * rho)
            )

        def measures(y, cy, hy, lam, mu, mu_old, rho):
            """(V for the penalty test, the KKT residual) at `y` (`cy = c(y)`,
            `hy = h(y)`)."""
            V = jnp.maximum(
                jnp.max(jnp.abs(cy), initial=0.0),
                jnp.max(jnp.abs(jnp.maximum(hy, -mu_old / rho)), initial=0.0),
            )
            stationarity = _projected_gradient(
                y, jax.grad(lagrangian)(y, lam, mu), lower, upper
            )
            feasibility = jnp.maximum(
                jnp.max(jnp.abs(cy), initial=0.0),
                jnp.max(jnp.maximum(hy, 0.0), initial=0.0),
            )
            complementarity = jnp.max(jnp.abs(jnp.minimum(-hy, mu)), initial=0.0)
            kkt = jnp.maximum(jnp.maximum(stationarity, feasibility), complementarity)
            return V, kkt

        def inner(y, lam, mu, rho, omega):
            fn = lambda z: augmented(z, lam, mu, rho)
            if self.inner_solver is None:
                return _projected_newton(
                    fn, y, lower, upper, omega, self.inner_max_steps
                )
            sol = optx.minimise(
                lambda z, _: fn(z),
                self.inner_solver,
                y,
                max_steps=self.inner_max_steps,
                throw=False,
            )
            return sol.value, sol.stats["num_steps"]

        def cond(s: _State):
            infeasible = (s.rho > self.rho_max) & (s.infeasibility > tol)
            return (
                (s.step < self.max_steps)
                & (s.kkt > tol)
                & jnp.isfinite(s.kkt)
                & ~infeasible
            )

        def body(s: _State):
            y, used = inner(s.y, s.lam, s.mu, s.rho, s.omega)
            cy, hy = c(y), h(y)
            bound = self.multiplier_bound
            lam = jnp.clip(s.lam + s.rho * cy, -bound, bound)
            mu = jnp.clip(s.mu + s.rho * hy, 0.0, bound)
            V, kkt = measures(y, cy, hy, lam, mu, s.mu, s.rho)
            stalled = (V > self.tau * s.infeasibility) & (V > tol)
            rho = jnp.where(stalled, self.rho_growth, 1.0)
            return _State(
                y,
                lam,
                mu,
                rho * s.rho,
                jnp.maximum(tol, 0.1 * s.omega),
                V,
                kkt,
                s.step + 1,
                s.inner_steps + used,
            )

        lam0, mu0 = jnp.zeros(m, dtype), jnp.zeros(p, dtype)
        c0, h0 = c(y_start), h(y_start)
        if self.rho is None:
            violated = jnp.maximum(h0, 0.0)
            rho0 = jnp.clip(
                10.0
                * jnp.maximum(1.0, jnp.abs(f(y_start)))
                / jnp.maximum(1.0, 0.5 * (c0 @ c0 + violated @ violated)),
                1e-8,
                1e8,
            )
        else:
            rho0 = jnp.asarray(self.rho, dtype)
        V0, kkt0 = measures(y_start, c0, h0, lam0, mu0, mu0, rho0)
        init = _State(
            y_start,
            lam0,
            mu0,
            rho0.astype(dtype),
            jnp.maximum(jnp.asarray(tol, dtype), jnp.sqrt(tol)),
            V0,
            kkt0,
            jnp.array(0),
            jnp.array(0),
        )
        s = jax.lax.while_loop(cond, body, init)
        result = RESULTS.where(
            s.kkt <= tol, RESULTS.successful, RESULTS.max_steps_reached
        )
        infeasible = (s.rho > self.rho_max) & (s.infeasibility > tol)
        result = RESULTS.where(infeasible, RESULTS.infeasible, result)
        finite = jnp.isfinite(s.kkt) & jnp.all(jnp.isfinite(s.y))
        result = RESULTS.where(finite, result, RESULTS.nonfinite)
        multipliers = {}
        if problem.eq is not None:
            multipliers["eq"] = s.lam
        if problem.ineq is not None:
            multipliers["ineq"] = s.mu
        if problem.bounds is not None:
            g = jax.grad(lagrangian)(s.y, s.lam, s.mu)
            multipliers["lower"] = jnp.where(s.y <= lower, jnp.maximum(g, 0.0), 0.0)
            multipliers["upper"] = jnp.where(s.y >= upper, jnp.maximum(-g, 0.0), 0.0)
        stats = {
            "num_steps": s.step,
            "kkt_residual": s.kkt,
            "inner_steps": s.inner_steps,
            "rho": s.rho,
        }
        return ConstrainedSolution(unravel(s.y), multipliers, stats, result)
