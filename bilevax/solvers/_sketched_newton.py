r"""Sketched inexact Newton on the exact augmented Lagrangian (Hong, Na, Mahoney,
Kolar, ICML 2023, "Constrained optimization via exact augmented Lagrangian and
randomized iterative sketching").

For `min f(y)` subject to `c(y) = 0` (`G = ∂c/∂y`, `L = f + λᵀc`), each iteration

1. stops when the KKT residual `‖(∇_y L, c)‖ <= tol`;
2. regularises `H = ∇²_y L`: `B = H + (ξ_B + ‖H‖) I` when the reduced Hessian
   `ZᵀHZ` (`Z` a null-space basis of `G`) has an eigenvalue below `1e-6`;
3. solves the Newton-KKT system `[[B, Gᵀ], [G, 0]] d = -(∇_y L, c)` by a randomized
   sketching solver, only to the adaptive accuracy `‖K‖ Ψ ‖r‖ <= θ δ ‖b‖`;
4. checks that `d` descends the exact augmented-Lagrangian merit

       L_η(y, λ) = f + λᵀc + η1/2 ‖c‖² + η2/2 ‖∇_y L‖²,

   whose gradient `(∇_y L + η1 Gᵀc + η2 ∇²_y L ∇_y L, c + η2 G ∇_y L)` uses the
   Hessian of the Lagrangian; if not, `η1 ← ν² η1`, `η2 ← η2/ν`, `δ` shrinks and
   the system is solved more accurately;
5. takes the Armijo step `α` (halving from 1) on `L_η`.

`η1`, `η2`, `δ` carry over between iterations.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PRNGKeyArray

from ._linesearch import backtrack
from ._problem import RESULTS, ConstrainedProblem, ConstrainedSolution
from .sketch import AbstractSketchSolver, RandomizedKaczmarz


def _with_accuracy(solver: lx.AbstractLinearSolver, rtol):
    """A sketching solver with its `rtol` set to the adaptive accuracy; a direct
    solver (`lineax.LU()`) as it is."""
    if isinstance(solver, AbstractSketchSolver):
        return eqx.tree_at(lambda sv: sv.rtol, solver, rtol)
    return solver


def _damped_bfgs(B: Array, s: Array, r: Array) -> Array:
    """BFGS update of `B` from the step `s` and gradient change `r`, with Powell's
    damping (`r` pulled towards `Bs` until `sᵀr >= 0.2 sᵀBs`)."""
    Bs = B @ s
    sBs = s @ Bs
    sr = s @ r
    theta = jnp.where(sr >= 0.2 * sBs, 1.0, 0.8 * sBs / (sBs - sr))
    r = theta * r + (1 - theta) * Bs
    sr = s @ r
    safe = sBs > 1e-12 * jnp.maximum(1.0, s @ s)
    update = jnp.outer(r, r) / jnp.where(safe, sr, 1.0) - jnp.outer(Bs, Bs) / jnp.where(
        safe, sBs, 1.0
    )
    return jnp.where(safe, B + update, B)


class _State(eqx.Module):
    y: Array
    lam: Array
    eta1: Array
    eta2: Array
    delta: Array
    step: Array
    sketch_steps: Array
    grad_l: Array  # ∇_y L(y, λ)
    c: Array  # c(y)
    singular: Array
    hessian: Array  # the BFGS approximation of ∇²_y L (unused when exact)


class SketchedNewton(eqx.Module):
    """Sketched inexact Newton-SQP with the exact augmented-Lagrangian merit, for
    equality-constrained problems (see the module docs for the method).

    **Arguments** (defaults of the paper's code):

    - `linear_solver`: a sketching solver (`RandomizedKaczmarz()` by default,
      `GaussianSketch(...)`, `SketchAndProject(...)`); its `rtol` is replaced by
      the adaptive accuracy, its `max_steps` caps each solve. Or a direct lineax
      solver (`lineax.LU()`): one dense solve of the KKT system per step, the
      fastest choice for small problems.

    A rank-deficient or ill-conditioned constraint Jacobian (`λ_min(GGᵀ) <
    1e-2`, e.g. redundant constraints) does not stop the method: the constraint
    block of the KKT matrix is regularised by `-γI`, `γ = min(1, KKT residual)`
    (Levenberg-Marquardt / stabilised SQP). `RESULTS.singular` is kept for
    inconsistent linearisations, where even the regularised step makes no
    progress.
    - `tol` (1e-4): KKT residual `‖(∇_y L, c)‖₂` at which to stop.
    - `max_steps` (10,000): Newton iterations.
    - `eta1` (1), `eta2` (0.1), `delta` (0.1): initial merit and accuracy
      parameters; `xi_b` (0.1), `beta` (0.1, Armijo), `nu` (1.5), `theta` (1).

    - `hessian` (`"exact"`): `H = ∇²_y L` by autodiff, or `"bfgs"` for a damped
      BFGS approximation (Powell's damping keeps it positive definite) built from
      the steps, which saves the `n` Hessian-vector products per iteration. The
      merit's gradient always uses the exact `∇²_y L ∇_y L` (one Hessian-vector
      product), as the method requires.

    `G` and `H` are dense: for problems of up to a few thousand variables.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.solvers.ConstrainedProblem(
    ...     lambda y, a: jnp.sum((y - a) ** 2) + jnp.sum(y**4),
    ...     eq=lambda y, a: jnp.array([jnp.sum(y) - 1.0]),
    ... )
    >>> solver = bx.solvers.SketchedNewton(tol=1e-6)
    >>> a = jnp.array([1.0, 0.0, 0.0])
    >>> solution = bx.solvers.minimize(problem, jnp.zeros(3), a, solver)
    >>> print(solution.y.round(3), solution.result == bx.solvers.RESULTS.successful)
    [0.647 0.177 0.177] True

    ```
    """

    linear_solver: lx.AbstractLinearSolver = RandomizedKaczmarz(max_steps=100_000)
    tol: float = 1e-4
    max_steps: int = 10_000
    eta1: float = 1.0
    eta2: float = 0.1
    delta: float = 0.1
    xi_b: float = 0.1
    beta: float = 0.1
    nu: float = 1.5
    theta: float = 1.0
    hessian: Literal["exact", "bfgs"] = "exact"

    def __check_init__(self):
        if self.hessian not in ("exact", "bfgs"):
            raise ValueError(
                f"`hessian` must be 'exact' or 'bfgs'; got {self.hessian!r}."
            )

    def run(
        self, problem: ConstrainedProblem, y0, args, key: PRNGKeyArray
    ) -> ConstrainedSolution:
        if problem.ineq is not None or problem.bounds is not None:
            raise ValueError(
                "`SketchedNewton` handles equality constraints only; use "
                "`AugmentedLagrangian` for inequalities and bounds."
            )
        if problem.eq is None:
            raise ValueError("`SketchedNewton` needs equality constraints (`eq`).")
        y0_flat, unravel = jfu.ravel_pytree(y0)
        f = lambda y: problem.objective(unravel(y), args)
        c = lambda y: problem.eq(unravel(y), args)
        m = jax.eval_shape(c, y0_flat).shape[0]
        n = y0_flat.shape[0]
        dtype = y0_flat.dtype
        lagrangian = lambda y, lam: f(y) + lam @ c(y)
        grad_l = jax.grad(lagrangian)
        hess_l = jax.hessian(lagrangian)
        jac_c = jax.jacfwd(c)

        def merit(y, lam, eta1, eta2):
            gl = grad_l(y, lam)
            cy = c(y)
            return f(y) + lam @ cy + 0.5 * eta1 * cy @ cy + 0.5 * eta2 * gl @ gl

        merit_grad = jax.grad(merit, argnums=(0, 1))

        def kkt_residual(s: _State):
            return jnp.linalg.norm(jnp.concatenate([s.grad_l, s.c]))

        def cond(s: _State):
            kkt = kkt_residual(s)
            finite = jnp.isfinite(kkt)
            return (s.step < self.max_steps) & (kkt > self.tol) & finite & ~s.singular

        def body(s: _State):
            y, lam = s.y, s.lam
            gl, cy = s.grad_l, s.c
            G = jac_c(y)
            H = hess_l(y, lam) if self.hessian == "exact" else s.hessian
            xi_g = jnp.linalg.eigvalsh(G @ G.T)[0]
            # rank-deficient or ill-conditioned G: a Levenberg-Marquardt
            # (stabilised SQP) regularisation -γI of the constraint block, γ of the
            # order of the KKT residual, so that the step exists and the fast local
            # convergence is kept
            deficient = xi_g < 1e-2
            gamma = jnp.where(deficient, jnp.minimum(1.0, kkt_residual(s)), 0.0)
            Q, _ = jnp.linalg.qr(G.T, mode="complete")
            Z = Q[:, m:]
            reduced_min = jnp.linalg.eigvalsh(Z.T @ H @ Z)[0] if n > m else jnp.inf
            norm_h = jnp.linalg.norm(H, 2)
            B = jnp.where(
                reduced_min < 1e-6,
                H + (self.xi_b + norm_h) * jnp.eye(n, dtype=dtype),
                H,
            )
            psi = (
                20.0
                * jnp.maximum(jnp.linalg.norm(B, 2) ** 2, 1.0)
                / (
                    jnp.minimum(jnp.maximum(xi_g, 1e-2), 1.0)
                    * jnp.minimum(self.xi_b, 1.0)
                )
            )
            upsilon = jnp.maximum(jnp.maximum(jnp.linalg.norm(G, 2), norm_h), 1.0)
            K = jnp.block([[B, G.T], [G, -gamma * jnp.eye(m, dtype=dtype)]])
            norm_k = jnp.linalg.norm(K, 2)
            b = -jnp.concatenate([gl, cy])
            operator = lx.MatrixLinearOperator(K)

            def delta_trial(eta1, eta2):
                return (
                    (0.5 - self.beta) * eta2 / ((1 + eta1 + eta2) * upsilon**2 * psi**2)
                )

            def solve(eta1, eta2, delta, k):
                # the paper's accuracy, floored where the dtype can no longer
                # reach it: below ~100 ulps a sketch solve only runs to max_steps
                floor = 100 * jnp.finfo(dtype).eps
                solver = _with_accuracy(
                    self.linear_solver,
                    jnp.maximum(self.theta * delta / (norm_k * psi), floor),
                )
                sol = lx.linear_solve(
                    operator, b, solver, options={"key": k}, throw=False
                )
                d = sol.value
                gy, glam = merit_grad(y, lam, eta1, eta2)
                slope = gy @ d[:n] + glam @ d[n:]
                return d, slope, sol.stats.get("num_steps", jnp.array(1))

            delta0 = jnp.maximum(
                1e-6, jnp.minimum(s.delta, delta_trial(s.eta1, s.eta2))
            )
            step_key = jax.random.fold_in(key, s.step)
            d, slope, used = solve(s.eta1, s.eta2, delta0, step_key)
            bb = b @ b

            def not_descent(carry):
                _, slope, _, eta1, eta2, _, _ = carry
                stuck = (eta1 > 1e8) | (eta2 < 1e-8)
                return (slope > -0.5 * eta2 * bb) & ~stuck

            def adjust(carry):
                _, _, used, eta1, eta2, delta, k = carry
                eta1, eta2 = self.nu**2 * eta1, eta2 / self.nu
                delta = jnp.maximum(
                    1e-6, jnp.minimum(delta / self.nu**4, delta_trial(eta1, eta2))
                )
                k = jax.random.fold_in(k, 1)
                d, slope, more = solve(eta1, eta2, delta, k)
                return d, slope, used + more, eta1, eta2, delta, k

            d, slope, used, eta1, eta2, delta, _ = jax.lax.while_loop(
                not_descent, adjust, (d, slope, used, s.eta1, s.eta2, delta0, step_key)
            )
            m0 = merit(y, lam, eta1, eta2)

            def accept(alpha):
                trial = merit(y + alpha * d[:n], lam + alpha * d[n:], eta1, eta2)
                return trial <= m0 + alpha * self.beta * slope, None

            alpha, found, _ = backtrack(accept, dtype, min_step=1e-12)
            # no step along a regularised direction: the linearisation is
            # inconsistent (e.g. contradictory constraints)
            singular = deficient & ~found
            y_new = jnp.where(singular, y, y + alpha * d[:n])
            lam_new = jnp.where(singular, lam, lam + alpha * d[n:])
            gl_new = grad_l(y_new, lam_new)
            if self.hessian == "bfgs":
                B = _damped_bfgs(s.hessian, y_new - y, gl_new - grad_l(y, lam_new))
            else:
                B = s.hessian
            return _State(
                y_new,
                lam_new,
                eta1,
                eta2,
                delta,
                s.step + 1,
                s.sketch_steps + used,
                gl_new,
                c(y_new),
                singular,
                B,
            )

        lam0 = jnp.zeros(m, dtype)
        init = _State(
            y0_flat,
            lam0,
            jnp.array(self.eta1, dtype),
            jnp.array(self.eta2, dtype),
            jnp.array(self.delta, dtype),
            jnp.array(0),
            jnp.array(0),
            grad_l(y0_flat, lam0),
            c(y0_flat),
            jnp.array(False),
            jnp.eye(n if self.hessian == "bfgs" else 0, dtype=dtype),
        )
        s = jax.lax.while_loop(cond, body, init)
        kkt = kkt_residual(s)
        result = RESULTS.where(
            kkt <= self.tol, RESULTS.successful, RESULTS.max_steps_reached
        )
        result = RESULTS.where(s.singular, RESULTS.singular, result)
        finite = jnp.isfinite(kkt) & jnp.all(jnp.isfinite(s.y))
        result = RESULTS.where(finite, result, RESULTS.nonfinite)
        stats = {
            "num_steps": s.step,
            "kkt_residual": kkt,
            "sketch_steps": s.sketch_steps,
            "eta1": s.eta1,
            "eta2": s.eta2,
        }
        return ConstrainedSolution(unravel(s.y), {"eq": s.lam}, stats, result)
