r"""Sketched inexact Newton on the exact augmented Lagrangian (Hong, Na, Mahoney,
Kolar, ICML 2023, "Constrained optimization via exact augmented Lagrangian and
randomized iterative sketching").

For `min f(y)` subject to `c(y) = 0` (`G = ∂c/∂y`, `L = f + λᵀc`), each iteration

1. stops when the KKT residual `‖(∇_y L, c)‖ <= tol`;
2. regularises `H = ∇²_y L`: `B = H + (ξ_B + ‖H‖) I` when the reduced Hessian
   `ZᵀHZ` (`Z` a null-space basis of `G`) has an eigenvalue below `1e-6`;
3. solves the Newton-KKT system `[[B, Gᵀ], [G, 0]] d = -(∇_y L, c) = b` by a
   randomized sketching solver, only to the relative residual
   `max(θ δ / (‖K‖ Ψ), min(forcing, ‖b‖))`: the paper's adaptive accuracy, or
   the inexact-Newton forcing term `min(forcing, ‖b‖)` where it is looser (loose
   far from the solution, tightening like the KKT residual `‖b‖` near it, which
   keeps the local rate superlinear: θ_k → 0 in the paper's analysis);
4. checks that `d` descends the exact augmented-Lagrangian merit

       L_η(y, λ) = f + λᵀc + η1/2 ‖c‖² + η2/2 ‖∇_y L‖²,

   whose gradient `(∇_y L + η1 Gᵀc + η2 ∇²_y L ∇_y L, c + η2 G ∇_y L)` uses the
   Hessian of the Lagrangian; if not, the sketch solve is resumed from `d` (warm
   start) to 100 times the accuracy while the forcing term is looser than the
   paper's accuracy, and then, as in the paper, `η1 ← ν² η1`, `η2 ← η2/ν`, `δ`
   shrinks and the solve is resumed more accurately;
5. takes the Armijo step `α` (halving from 1) on `L_η`.

`η1`, `η2`, `δ` carry over between iterations.
"""

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, PRNGKeyArray

from ._base import AbstractConstrainedSolver
from ._linesearch import backtrack
from ._problem import RESULTS, FlatProblem
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
    sketch_steps: Array
    grad_l: Array  # ∇_y L(y, λ)
    c: Array  # c(y)
    singular: Array
    hessian: Array  # the BFGS approximation of ∇²_y L (unused when exact)


class _System(eqx.Module):
    """The (regularised) Newton-KKT system of one iteration and the constants of
    the paper's accuracy condition."""

    operator: lx.MatrixLinearOperator
    b: Array  # -(∇_y L, c)
    norm_k: Array
    psi: Array
    upsilon: Array
    deficient: Array  # G rank deficient or ill conditioned: regularised
    linear_solver: lx.AbstractLinearSolver

    @property
    def sketched(self) -> bool:
        return isinstance(self.linear_solver, AbstractSketchSolver)


def _lagrangian(problem: FlatProblem, y, lam):
    return problem.f(y) + lam @ problem.c(y)


def _merit(problem: FlatProblem, y, lam, eta1, eta2):
    """The exact augmented Lagrangian `L_η` (module docs)."""
    gl = jax.grad(_lagrangian, argnums=1)(problem, y, lam)
    cy = problem.c(y)
    return _lagrangian(problem, y, lam) + 0.5 * eta1 * cy @ cy + 0.5 * eta2 * gl @ gl


def _kkt_residual(s: _State):
    return jnp.linalg.norm(jnp.concatenate([s.grad_l, s.c]))


class SketchedNewton(AbstractConstrainedSolver):
    """Sketched inexact Newton-SQP with the exact augmented-Lagrangian merit, for
    equality-constrained problems (see the module docs for the method).

    **Arguments** (defaults of the paper's code where it has them):

    - `linear_solver` (`None`): `None` solves the KKT system of `n + m <=
      dense_max` (256) unknowns by one dense LU factorisation per step
      (`lineax.LU()`, the fastest for small problems) and larger ones by
      `RandomizedKaczmarz(max_steps=100_000)`. Or a sketching solver
      (`RandomizedKaczmarz(...)`, `GaussianSketch(...)`, `SketchAndProject(...)`):
      its `rtol` is replaced by the adaptive accuracy (module docs), its
      `max_steps` caps each solve; or any direct lineax solver.
    - `forcing` (0.1): the loosest relative residual of a sketch solve, used
      while the KKT residual is larger (module docs, step 3); `0` gives the
      paper's accuracy alone.
    - `tol` (1e-4): KKT residual `‖(∇_y L, c)‖₂` at which to stop.
    - `max_steps` (10,000): Newton iterations.
    - `eta1` (1), `eta2` (0.1), `delta` (0.1): initial merit and accuracy
      parameters; `xi_b` (0.1), `beta` (0.1, Armijo), `nu` (1.5), `theta` (1).
    - `hessian` (`"exact"`): `H = ∇²_y L` by autodiff, or `"bfgs"` for a damped
      BFGS approximation (Powell's damping keeps it positive definite) built from
      the steps, which saves the `n` Hessian-vector products per iteration. The
      merit's gradient always uses the exact `∇²_y L ∇_y L` (one Hessian-vector
      product), as the method requires.

    A rank-deficient or ill-conditioned constraint Jacobian (`λ_min(GGᵀ) <
    1e-2`, e.g. redundant constraints, or `G = 0` at the start) does not stop the
    method: the constraint block of the KKT matrix is regularised by `-γI`, `γ =
    min(1, KKT residual)` (Levenberg-Marquardt / stabilised SQP).
    `RESULTS.singular` is kept for inconsistent linearisations, where even the
    regularised step cannot decrease the merit (e.g. `y0 = 1` and `y0 = 2`).

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

    linear_solver: lx.AbstractLinearSolver | None = None
    dense_max: int = 256
    forcing: float = 0.1
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

    def init(self, problem: FlatProblem, y, key: PRNGKeyArray) -> _State:
        del key
        if problem.p > 0 or problem.has_bounds:
            raise ValueError(
                "`SketchedNewton` handles equality constraints only; use "
                "`AugmentedLagrangian` for inequalities and bounds."
            )
        if problem.problem.eq is None:
            raise ValueError("`SketchedNewton` needs equality constraints (`eq`).")
        dtype, n = y.dtype, y.shape[0]
        lam = jnp.zeros(problem.m, dtype)
        scalar = lambda v: jnp.array(v, dtype)
        return _State(
            y,
            lam,
            scalar(self.eta1),
            scalar(self.eta2),
            scalar(self.delta),
            jnp.array(0),
            jax.grad(_lagrangian, argnums=1)(problem, y, lam),
            problem.c(y),
            jnp.array(False),
            jnp.eye(n if self.hessian == "bfgs" else 0, dtype=dtype),
        )

    def _linear_solver(self, size: int) -> lx.AbstractLinearSolver:
        if self.linear_solver is not None:
            return self.linear_solver
        if size <= self.dense_max:
            return lx.LU()
        return RandomizedKaczmarz(max_steps=100_000)

    def _system(self, problem: FlatProblem, s: _State) -> _System:
        """`K = [[B, Gᵀ], [G, -γI]]` with `B` the regularised Hessian (module docs)
        and `γ = min(1, KKT residual)` when `λ_min(GGᵀ) < 1e-2` (a
        Levenberg-Marquardt, stabilised-SQP regularisation: the step exists and
        the fast local convergence is kept), `γ = 0` otherwise."""
        n, m, dtype = s.y.shape[0], s.lam.shape[0], s.y.dtype
        G = jax.jacfwd(problem.c)(s.y)
        H = s.hessian
        if self.hessian == "exact":
            H = jax.hessian(_lagrangian, argnums=1)(problem, s.y, s.lam)
        eig_g = jnp.linalg.eigvalsh(G @ G.T)
        deficient = eig_g[0] < 1e-2
        gamma = jnp.where(deficient, jnp.minimum(1.0, _kkt_residual(s)), 0.0)
        Z = jnp.linalg.qr(G.T, mode="complete")[0][:, m:]
        reduced_min = jnp.linalg.eigvalsh(Z.T @ H @ Z)[0] if n > m else jnp.inf
        eig_h = jnp.linalg.eigvalsh(H)  # ‖H‖₂ and ‖B‖₂ from one decomposition
        norm_h = jnp.max(jnp.abs(eig_h))
        shift = jnp.where(reduced_min < 1e-6, self.xi_b + norm_h, 0.0)
        B = H + shift * jnp.eye(n, dtype=dtype)
        psi = 20.0 * jnp.maximum(jnp.max(jnp.abs(eig_h + shift)) ** 2, 1.0)
        psi = psi / (jnp.clip(eig_g[0], 1e-2, 1.0) * min(self.xi_b, 1.0))
        norm_g = jnp.sqrt(jnp.maximum(eig_g[-1], 0.0))
        upsilon = jnp.maximum(jnp.maximum(norm_g, norm_h), 1.0)
        K = jnp.block([[B, G.T], [G, -gamma * jnp.eye(m, dtype=dtype)]])
        b = -jnp.concatenate([s.grad_l, s.c])
        solver = self._linear_solver(n + m)
        norm_k = jnp.ones((), dtype)  # used by the sketches' accuracy only
        if isinstance(solver, AbstractSketchSolver):
            norm_k = jnp.max(jnp.abs(jnp.linalg.eigvalsh(K)))
        operator = lx.MatrixLinearOperator(K)
        return _System(operator, b, norm_k, psi, upsilon, deficient, solver)

    def _delta_trial(self, system: _System, eta1, eta2):
        scale = (1 + eta1 + eta2) * system.upsilon**2 * system.psi**2
        return (0.5 - self.beta) * eta2 / scale

    def _paper_rtol(self, system: _System, delta):
        """The paper's accuracy `θ δ / (‖K‖ Ψ)`, floored where the dtype can no
        longer reach it (below ~100 ulps a sketch solve only runs to max_steps)."""
        floor = 100 * jnp.finfo(system.b.dtype).eps
        return jnp.maximum(self.theta * delta / (system.norm_k * system.psi), floor)

    def _solve(self, system: _System, rtol, key, d0=None):
        """`(d, sketch steps)`: the KKT system solved to the relative residual
        `rtol` (sketches), from `d0` (warm start) when given."""
        options = {"key": key} if d0 is None else {"key": key, "y0": d0}
        solver = _with_accuracy(system.linear_solver, rtol)
        sol = lx.linear_solve(
            system.operator, system.b, solver, options=options, throw=False
        )
        return sol.value, sol.stats.get("num_steps", jnp.array(1))

    def _slope(self, problem, s: _State, d, eta1, eta2):
        """`∇L_ηᵀ d`, with the Hessian of the Lagrangian (one Hessian-vector
        product)."""
        gy, glam = jax.grad(_merit, argnums=(1, 2))(problem, s.y, s.lam, eta1, eta2)
        n = s.y.shape[0]
        return gy @ d[:n] + glam @ d[n:]

    def _direction(self, problem, s: _State, system: _System, key):
        """A direction that descends `L_η` (module docs, steps 3-4):
        `(d, slope, sketch steps, η1, η2, δ)`."""
        bb = system.b @ system.b
        trial = self._delta_trial(system, s.eta1, s.eta2)
        delta0 = jnp.maximum(1e-6, jnp.minimum(s.delta, trial))
        rtol0 = self._paper_rtol(system, delta0)
        if system.sketched:
            rtol0 = jnp.maximum(rtol0, jnp.minimum(self.forcing, jnp.sqrt(bb)))
        d, used = self._solve(system, rtol0, key)
        slope = self._slope(problem, s, d, s.eta1, s.eta2)

        def not_descent(carry):
            _, slope, _, eta1, eta2, _, _, _ = carry
            stuck = (eta1 > 1e8) | (eta2 < 1e-8)
            return (slope > -0.5 * eta2 * bb) & ~stuck

        def adjust(carry):
            d, _, used, eta1, eta2, delta, rtol, k = carry
            # a forcing term looser than the paper's accuracy is refined first
            refine = system.sketched & (rtol > self._paper_rtol(system, delta))
            eta1 = jnp.where(refine, eta1, self.nu**2 * eta1)
            eta2 = jnp.where(refine, eta2, eta2 / self.nu)
            shrunk = jnp.minimum(
                delta / self.nu**4, self._delta_trial(system, eta1, eta2)
            )
            delta = jnp.where(refine, delta, jnp.maximum(1e-6, shrunk))
            paper = self._paper_rtol(system, delta)
            rtol = jnp.maximum(jnp.where(refine, 1e-2 * rtol, paper), paper)
            k = jax.random.fold_in(k, 1)
            if system.sketched:  # resume the sketch solve from d
                d, more = self._solve(system, rtol, k, d)
                used = used + more
            slope = self._slope(problem, s, d, eta1, eta2)
            return d, slope, used, eta1, eta2, delta, rtol, k

        carry = (d, slope, used, s.eta1, s.eta2, delta0, rtol0, key)
        return jax.lax.while_loop(not_descent, adjust, carry)[:6]

    def step(self, problem: FlatProblem, s: _State, key: PRNGKeyArray) -> _State:
        n = s.y.shape[0]
        system = self._system(problem, s)
        d, slope, used, eta1, eta2, delta = self._direction(problem, s, system, key)
        m0 = _merit(problem, s.y, s.lam, eta1, eta2)

        def accept(alpha):
            y, lam = s.y + alpha * d[:n], s.lam + alpha * d[n:]
            trial = _merit(problem, y, lam, eta1, eta2)
            return trial <= m0 + alpha * self.beta * slope, None

        alpha, found, _ = backtrack(accept, s.y.dtype, min_step=1e-12)
        # no step along a regularised direction: the linearisation is
        # inconsistent (e.g. contradictory constraints)
        singular = system.deficient & ~found
        alpha = jnp.where(singular, 0.0, alpha)
        y, lam = s.y + alpha * d[:n], s.lam + alpha * d[n:]
        grad_l = jax.grad(_lagrangian, argnums=1)
        gl = grad_l(problem, y, lam)
        hessian = s.hessian
        if self.hessian == "bfgs":
            hessian = _damped_bfgs(hessian, y - s.y, gl - grad_l(problem, s.y, lam))
        sketch_steps = s.sketch_steps + used
        return _State(
            y, lam, eta1, eta2, delta, sketch_steps, gl, problem.c(y), singular, hessian
        )

    def terminate(self, problem: FlatProblem, s: _State):
        kkt = _kkt_residual(s)
        finite = jnp.isfinite(kkt) & jnp.all(jnp.isfinite(s.y))
        result = RESULTS.where(kkt <= self.tol, RESULTS.successful, RESULTS.singular)
        result = RESULTS.where(finite, result, RESULTS.nonfinite)
        return (kkt <= self.tol) | s.singular | ~finite, result

    def postprocess(self, problem: FlatProblem, s: _State, result: RESULTS):
        stats = {
            "kkt_residual": _kkt_residual(s),
            "sketch_steps": s.sketch_steps,
            "eta1": s.eta1,
            "eta2": s.eta2,
        }
        return s.y, {"eq": s.lam}, stats
