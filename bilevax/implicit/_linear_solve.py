"""Linear solvers for the adjoint system of implicit differentiation.

The adjoint system is `A v = b` with `A = ∂F/∂y` the Jacobian of the optimality
condition at the solution. `A` is only ever available as a matrix-free lineax
operator (a linearised JVP), so the solvers here work from matrix-vector products.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from ._tree import same_shapes, tree_all_finite, tree_dot, tree_norm


def _dominant_eigenvalue(operator: lx.AbstractLinearOperator, steps: int) -> Array:
    """Estimate of the eigenvalue of largest magnitude of `operator`, signed.

    `steps` power iterations from a fixed pseudo-random direction (deterministic),
    then magnitude `‖A v‖` and sign of the Rayleigh quotient `vᵀ A v` at the last
    unit iterate `v`. For symmetric operators this approaches `λ_max` in magnitude
    from below.
    """
    leaves, treedef = jtu.tree_flatten(operator.in_structure())
    keys = jax.random.split(jax.random.key(0), len(leaves))
    v = jtu.tree_unflatten(
        treedef,
        [
            jax.random.normal(k, s.shape, s.dtype)
            for k, s in zip(keys, leaves, strict=True)
        ],
    )

    def normalise(w):
        norm = tree_norm(w)
        return jtu.tree_map(lambda a: a / jnp.where(norm > 0, norm, 1), w)

    v = jax.lax.fori_loop(
        0, steps, lambda _, w: normalise(operator.mv(w)), normalise(v)
    )
    av = operator.mv(v)
    return jnp.where(tree_dot(v, av) < 0, -1.0, 1.0) * tree_norm(av)


def _relative_residual(operator, solution, vector) -> Array:
    """`‖A v - b‖₂ / ‖b‖₂` (`‖A v‖₂` when `b = 0`); NaN stays NaN."""
    r = jtu.tree_map(jnp.subtract, operator.mv(solution), vector)
    b = tree_norm(vector)
    return tree_norm(r) / jnp.where(b > 0, b, 1)


class Neumann(lx.AbstractLinearSolver):
    r"""Truncated Neumann series for `A v = b` (Lorraine, Vicol, Duvenaud, 2020).

    Approximates the inverse by

    $$A^{-1} b \approx \alpha \sum_{j=0}^{\text{steps}} (I - \alpha A)^j b,$$

    which converges when the eigenvalues of `αA` lie in the disc `|1 - z| < 1`: for
    a symmetric positive definite `A` this means `0 < α < 2/λ_max(A)`. Each step
    costs one matrix-vector product (one Hessian-vector product when `A` is a
    Hessian). For a fixed-point condition `F(y) = T(y) - y` the Jacobian is `∂T - I`;
    use `scale=-1.0` (or leave the default) and the series becomes `Σ (∂T)^j`.

    With `steps=0` this is the identity approximation `α b`. At a fixed point of
    gradient descent with step `α`, `steps` terms equal back-propagation through the
    last `steps + 1` iterations.

    **Arguments:**

    - `steps`: number of terms of the series after the first.
    - `scale`: `α`. `None` (default) estimates the spectral radius `ρ` of `A` with
      `power_iterations` power iterations and uses `α = 1/λ`, with `λ` the signed
      eigenvalue of largest magnitude, so that negative definite operators (such
      as the Jacobian `∂T - I` of a contractive fixed-point map) converge too.
    - `power_iterations`: power iterations used when `scale` is `None`.
    - `rtol`: the largest relative residual `‖A v - b‖₂/‖b‖₂` accepted (default 1:
      the series must at least improve on `v = 0`).

    The series is truncated, not iterated to a tolerance: the number of steps is
    what the user asked for. Its residual `A v - b = -(I - αA)^{steps+1} b` is then
    checked (one more product): above 1 the series diverges (`α` outside the
    convergence region) and the status is `breakdown`; above `rtol` it is
    `max_steps_reached`. The relative residual is in the stats (`"residual"`).

    Example:

    ```python
    >>> import jax.numpy as jnp, lineax as lx
    >>> from bilevax.implicit import Neumann
    >>> A = jnp.array([[1.0, 0.5], [0.5, 1.0]])  # eigenvalues 0.5 and 1.5
    >>> operator = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    >>> b = jnp.array([1.5, 1.5])  # solution (1, 1)
    >>> approx = lx.linear_solve(operator, b, Neumann(steps=100, scale=1.0)).value
    >>> print(approx.round(3), jnp.linalg.solve(A, b).round(3))
    [1. 1.] [1. 1.]

    ```
    """

    steps: int = 50
    scale: float | None = None
    power_iterations: int = 20
    rtol: float = 1.0

    def __check_init__(self):
        if self.steps < 0:
            raise ValueError(f"`Neumann(steps=...)` must be >= 0, got {self.steps}.")
        if not self.rtol > 0:
            raise ValueError(f"`Neumann(rtol=...)` must be > 0, got {self.rtol}.")
        if self.scale is not None and self.scale == 0:
            raise ValueError("`Neumann(scale=...)` must be non-zero.")

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        if operator.in_structure() != operator.out_structure():
            raise ValueError(
                "`Neumann` needs a square operator whose input and output have the "
                f"same structure; got input {operator.in_structure()} and output "
                f"{operator.out_structure()}."
            )
        return operator

    def _scale(self, operator: lx.AbstractLinearOperator) -> Array:
        if self.scale is not None:
            return jnp.asarray(self.scale)
        lam = _dominant_eigenvalue(operator, self.power_iterations)
        return 1.0 / jnp.where(lam != 0, lam, 1.0)

    def compute(self, state, vector: PyTree[Array], options: dict[str, Any]):
        operator = state
        alpha = self._scale(operator)

        def body(_, carry):
            term, total = carry
            term = jtu.tree_map(lambda t, at: t - alpha * at, term, operator.mv(term))
            return term, jtu.tree_map(jnp.add, total, term)

        _, total = jax.lax.fori_loop(0, self.steps, body, (vector, vector))
        solution = jtu.tree_map(lambda t: (alpha * t).astype(t.dtype), total)
        residual = _relative_residual(operator, solution, vector)
        result = lx.RESULTS.where(
            residual <= self.rtol, lx.RESULTS.successful, lx.RESULTS.max_steps_reached
        )
        result = lx.RESULTS.where(residual <= 1, result, lx.RESULTS.breakdown)
        stats = {"num_steps": jnp.array(self.steps), "scale": alpha}
        return solution, result, stats | {"residual": residual}

    def transpose(self, state, options: dict[str, Any]):
        return state.transpose(), options

    def conj(self, state, options: dict[str, Any]):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True


class CG(lx.AbstractLinearSolver):
    r"""(Preconditioned) conjugate gradients for symmetric positive definite
    operators, matrix-free (Hestenes and Stiefel, 1952).

    Stops when `‖r‖₂ <= max(rtol ‖b‖₂, atol)` (the rule of `scipy`/`jax.scipy`
    CG), after at most `max_steps` steps. Breakdown is declared only when a search
    direction has `pᵀAp <= 0` or the preconditioned residual has `rᵀMr <= 0`, i.e.
    when the operator or the preconditioner is not positive definite.

    This is the default solver of symmetric adjoint systems in bilevax (and the only
    CG it documents). Why not `lineax.CG`: lineax 0.1 flags breakdown when
    `|pᵀAp| <= 100·ε·n·‖r‖²` (`ε` machine precision, `n` the size), which in
    float32 with `n = 1e5` rejects every operator whose Rayleigh quotients are
    below about 1, e.g. the Hessian of a weight-decayed cross-entropy, and returns
    NaN. Any lineax solver can still be passed to `custom_root`.

    **Arguments:**

    - `rtol`, `atol`: relative and absolute tolerance on the residual's 2-norm.
    - `max_steps`: iteration cap; `None` means `10 n` (as SciPy).
    - `preconditioner`: optional symmetric positive definite lineax operator `M ≈
      A⁻¹` (same input structure as `A`), applied to the residual.

    As in lineax, `options` of `lineax.linear_solve` may give `"y0"` (an initial
    guess, e.g. the previous solution of a slowly changing system: a warm start)
    and `"preconditioner"` (which overrides the field).

    Status: `successful`, `max_steps_reached`, or `breakdown` (not positive
    definite); the number of steps is in the stats.

    Example:

    ```python
    >>> import jax.numpy as jnp, lineax as lx
    >>> from bilevax.implicit import CG
    >>> A = jnp.array([[4.0, 1.0], [1.0, 3.0]])
    >>> operator = lx.MatrixLinearOperator(A, lx.positive_semidefinite_tag)
    >>> solution = lx.linear_solve(operator, jnp.array([1.0, 2.0]), CG(rtol=1e-6))
    >>> print(solution.value.round(4), solution.stats["num_steps"])
    [0.0909 0.6364] 2
    >>> jacobi = lx.DiagonalLinearOperator(1 / jnp.diag(A))
    >>> warm = {"y0": jnp.array([0.09, 0.64]), "preconditioner": jacobi}
    >>> b = jnp.array([1.0, 2.0])
    >>> solution = lx.linear_solve(operator, b, CG(1e-6), options=warm)
    >>> print(solution.value.round(4))
    [0.0909 0.6364]

    ```
    """

    rtol: float
    atol: float = 0.0
    max_steps: int | None = None
    preconditioner: lx.AbstractLinearOperator | None = None

    def __check_init__(self):
        tols = [t for t in (self.rtol, self.atol) if isinstance(t, int | float)]
        if any(t < 0 for t in tols):  # traced tolerances (schedules) are unchecked
            raise ValueError("`CG` tolerances must be non-negative.")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError("`CG(max_steps=...)` must be >= 0.")

    def init(self, operator: lx.AbstractLinearOperator, options: dict[str, Any]):
        if operator.in_structure() != operator.out_structure():
            raise ValueError(
                "`CG` needs a square operator whose input and output have the same "
                f"structure; got input {operator.in_structure()} and output "
                f"{operator.out_structure()}."
            )
        return operator

    def _start(self, operator, vector, options):
        """Initial iterate and residual, and the preconditioner as a function."""
        y0 = options.get("y0")
        if y0 is None:
            x, r = jtu.tree_map(jnp.zeros_like, vector), vector
        else:
            x = _check_like_vector(y0, vector, "y0")
            r = jtu.tree_map(jnp.subtract, vector, operator.mv(x))
        preconditioner = options.get("preconditioner", self.preconditioner)
        if preconditioner is None:
            return x, r, lambda v: v
        if preconditioner.in_structure() != operator.in_structure():
            raise ValueError(
                "`CG`: the preconditioner's structure "
                f"{preconditioner.in_structure()} differs from the operator's "
                f"{operator.in_structure()}."
            )
        return x, r, preconditioner.mv

    def compute(self, state, vector: PyTree[Array], options: dict[str, Any]):
        operator = state
        size = sum(leaf.size for leaf in jtu.tree_leaves(vector))
        max_steps = 10 * size if self.max_steps is None else self.max_steps
        tol = jnp.maximum(self.rtol * tree_norm(vector), self.atol)
        x, r, precondition = self._start(operator, vector, options)

        def cond(carry):
            _, r, _, _, step, broken = carry
            return (step < max_steps) & (tree_norm(r) > tol) & ~broken

        def body(carry):
            x, r, p, gamma, step, _ = carry
            ap = operator.mv(p)
            pap = tree_dot(p, ap)
            broken = ~(pap > 0) | ~(gamma > 0)
            alpha = jnp.where(broken, 0.0, gamma / jnp.where(broken, 1.0, pap))
            x = jtu.tree_map(lambda a, b: a + alpha * b, x, p)
            r = jtu.tree_map(lambda a, b: a - alpha * b, r, ap)
            z = precondition(r)
            gamma_new = tree_dot(r, z)
            beta = gamma_new / jnp.where(gamma > 0, gamma, 1.0)
            p = jtu.tree_map(lambda a, b: a + beta * b, z, p)
            return x, r, p, gamma_new, step + 1, broken

        z = precondition(r)
        init = (x, r, z, tree_dot(r, z), jnp.array(0), jnp.array(False))
        x, r, _, _, steps, broken = jax.lax.while_loop(cond, body, init)
        converged = tree_norm(r) <= tol
        result = lx.RESULTS.where(
            converged, lx.RESULTS.successful, lx.RESULTS.max_steps_reached
        )
        result = lx.RESULTS.where(broken & ~converged, lx.RESULTS.breakdown, result)
        return x, result, {"num_steps": steps}

    def transpose(self, state, options: dict[str, Any]):
        transposed = {}  # a guess for A is none for Aᵀ
        if options.get("preconditioner") is not None:
            transposed["preconditioner"] = options["preconditioner"].transpose()
        return state.transpose(), transposed

    def conj(self, state, options: dict[str, Any]):
        return lx.conj(state), options

    def assume_full_rank(self) -> bool:
        return True


def _check_like_vector(tree, vector, name: str):
    """`tree` cast to the dtypes of `vector`, whose structure and shapes it must
    have."""
    if not same_shapes(tree, vector):
        raise ValueError(
            f"`{name}` must have the structure and shapes of the right-hand side; "
            f"got {jax.eval_shape(lambda: tree)}, expected "
            f"{jax.eval_shape(lambda: vector)}."
        )
    return jtu.tree_map(lambda a, b: jnp.asarray(a, b.dtype), tree, vector)


class _Reporting(lx.AbstractLinearSolver):
    """Wraps a lineax solver to report what it would otherwise hide.

    Adds to the wrapped solver's `compute`: a failure status when the solution or
    its residual is not finite, the relative residual `‖A v - b‖₂ / ‖b‖₂` and the
    number of steps in the stats. Because lineax transposes a linear solve into
    another solve with the transposed state, the checks also run on the
    reverse-mode (adjoint) solve.
    """

    solver: lx.AbstractLinearSolver
    residual: bool = True

    def init(self, operator, options):
        return operator, self.solver.init(operator, options)

    def compute(self, state, vector, options):
        operator, inner = state
        solution, result, stats = self.solver.compute(inner, vector, options)
        finite_in = tree_all_finite(vector)
        finite_out = tree_all_finite(solution)
        result = lx.RESULTS.where(finite_out, result, lx.RESULTS.singular)
        result = lx.RESULTS.where(finite_in, result, lx.RESULTS.nonfinite_input)
        out_stats = {"num_steps": jnp.asarray(stats.get("num_steps", 0))}
        if self.residual or "residual" in stats:
            residual = stats.get("residual")
            if residual is None:
                residual = _relative_residual(operator, solution, vector)
            out_stats["residual"] = residual
            # a NaN in the operator can stop an iterative solver at once with a
            # finite (wrong) solution: its residual tells (a non-finite solution
            # is already `singular`, and its residual is NaN too)
            result = lx.RESULTS.where(
                jnp.isfinite(residual) | ~finite_out, result, lx.RESULTS.nonfinite_input
            )
        return solution, result, out_stats

    def transpose(self, state, options):
        operator, inner = state
        inner_t, options_t = self.solver.transpose(inner, options)
        return (operator.transpose(), inner_t), options_t

    def conj(self, state, options):
        operator, inner = state
        inner_c, options_c = self.solver.conj(inner, options)
        return (lx.conj(operator), inner_c), options_c

    def assume_full_rank(self) -> bool:
        return self.solver.assume_full_rank()


def default_tolerance(dtype) -> float:
    """Default `rtol = atol` of iterative adjoint solves: 1e-10 in float64, 1e-5 in
    float32 (about the accuracy a float32 Krylov solve reaches).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> from bilevax.implicit import default_tolerance
    >>> default_tolerance(jnp.float32), default_tolerance(jnp.float64)
    (1e-05, 1e-10)

    ```
    """
    return 1e-10 if jnp.finfo(dtype).bits >= 64 else 1e-5


def default_linear_solver(tags: frozenset, dtype, size: int) -> lx.AbstractLinearSolver:
    """Matrix-free `bilevax.implicit.CG` when the operator is tagged symmetric
    positive semidefinite (the Jacobian of a gradient at a minimum, i.e. a Hessian),
    `lineax.GMRES` otherwise.

    Tolerance `default_tolerance(dtype)`: for CG relative, `‖r‖₂ <= rtol ‖b‖₂`; for
    GMRES `rtol = atol` in lineax's elementwise sense (`|r_i| <= atol + rtol
    |b_i|`). At most `max(10 * size, 100)` steps, capped at 10,000 (non-convergence
    is reported, not hidden).

    Example:

    ```python
    >>> import jax.numpy as jnp, lineax as lx
    >>> from bilevax.implicit import default_linear_solver
    >>> spd = frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag})
    >>> default_linear_solver(spd, jnp.float32, 2)
    CG(rtol=1e-05, max_steps=100)
    >>> default_linear_solver(frozenset(), jnp.float32, 2)
    GMRES(rtol=1e-05, atol=1e-05, max_steps=100)

    ```
    """
    tol = default_tolerance(dtype)
    max_steps = min(max(10 * size, 100), 10_000)
    if lx.symmetric_tag in tags and lx.positive_semidefinite_tag in tags:
        return CG(rtol=tol, max_steps=max_steps)
    return lx.GMRES(rtol=tol, atol=tol, max_steps=max_steps)


def wrap_solver(solver: lx.AbstractLinearSolver, **kwargs) -> _Reporting:
    if isinstance(solver, _Reporting):
        solver = solver.solver
    if not isinstance(solver, lx.AbstractLinearSolver):
        raise TypeError(
            "`linear_solver` must be a lineax solver (e.g. `bilevax.implicit.CG(rtol)`"
            ", `lineax.GMRES(...)`, `bilevax.implicit.Neumann(...)`), got "
            f"{solver!r}."
        )
    return _Reporting(solver, **kwargs)


# A failed adjoint solve raises with bilevax's words, not the linear solver's:
# the status, the solver, the residual reached (by decade: an error message is a
# static string, so the residual is placed in one of these buckets) and the
# remedies.
_DECADES = range(-12, 2)  # "between 1e{k} and 1e{k+1}"


def _residual_text(bucket: int) -> str:
    if bucket == 0:
        return "a non-finite relative residual (NaN or infinity)"
    if bucket == 1:
        return f"a relative residual below 1e{_DECADES[0]}"
    if bucket == len(_DECADES) + 2:
        return f"a relative residual above 1e{_DECADES[-1] + 1}"
    k = _DECADES[bucket - 2]
    return f"a relative residual between 1e{k} and 1e{k + 1}"


def _residual_bucket(residual: Array) -> Array:
    tiny = jnp.finfo(jnp.result_type(residual)).tiny
    decade = jnp.floor(jnp.log10(jnp.maximum(residual, tiny))).astype(jnp.int32)
    bucket = 2 + jnp.clip(decade - _DECADES[0], -1, len(_DECADES))
    return jnp.where(jnp.isfinite(residual), bucket, 0)


def raise_if_failed(token, result, residual, solver, where: str, field: str | None):
    """`token`, raising a runtime error when `result` (a `lineax.RESULTS`) is a
    failure: the message names the status and where bilevax reports it (`field`),
    the `solver` (an instance or a class), the `residual` reached and the
    remedies."""
    solver = getattr(solver, "solver", solver)  # unwrap `_Reporting`
    name = solver.__name__ if isinstance(solver, type) else type(solver).__name__
    statuses = sorted(lx.RESULTS._name_to_item.items(), key=lambda s: int(s[1]._value))
    buckets = len(_DECADES) + 3
    report = (
        f"reported in `{field}` with `throw=False`"
        if field
        else "`root_vjp`/`root_jvp` return it with `throw=False`"
    )
    msgs = [
        f"{where}: the adjoint linear solve failed with status "
        f"`lineax.RESULTS.{status}` ({report}); the linear solver {name} reached "
        f"{_residual_text(bucket)}. Remedies: a better-conditioned problem (e.g. a "
        "strongly convex lower level, more regularisation), more steps or a looser "
        f"tolerance for {name} (`max_steps`, `rtol`), or a direct solver such as "
        "`lineax.LU()` for a small system (`lineax.Cholesky()` when it is symmetric "
        "positive definite)."
        for status, _ in statuses
        for bucket in range(buckets)
    ]
    index = result._value * buckets + _residual_bucket(jnp.asarray(residual))
    return eqx.branched_error_if(token, result != lx.RESULTS.successful, index, msgs)
