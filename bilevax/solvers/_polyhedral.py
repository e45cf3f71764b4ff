r"""Exact Euclidean projection onto a polyhedron, by a semismooth Newton method on
its dual.

For affine `e` (`m` rows) and `h` (`p` rows) and a box,

    P(t) = argmin_v ½‖v - t‖²  s.t.  e(v) = 0,  h(v) <= 0,  lower <= v <= upper.

With `a = (e, h) = A v + a₀` and multipliers `u = (ν, μ)`, `μ >= 0`, the dual
function `D(u) = min_{lower <= v <= upper} ½‖v - t‖² + uᵀa(v)` is concave and
piecewise quadratic: `v(u) = clip(t - Aᵀu, lower, upper)`, `∇D(u) = a(v(u))` and
`-A diag(free) Aᵀ` is a generalised Hessian (`free`: the entries of `v(u)` the
clip leaves alone). The solver maximises `D` by semismooth Newton steps with a
primal-dual active-set rule on `μ >= 0` (Hintermüller, Ito, Kunisch 2002),
globalised by an Armijo search on the projection arc and a projected gradient step
where Newton makes no progress; `A` is formed once
by forward-mode autodiff, so one step costs a `(m+p)×n×(m+p)` product and a
Cholesky factorisation.

The projection is differentiable (with respect to `target`, `bounds` and any
arrays `eq` and `ineq` close over) through its own KKT conditions, active-set
aware: with `u = (ν, μ)`,

    v = clip(t - Aᵀu, lower, upper),   e(v) = 0,   where(μ > 0, h(v), μ) = 0,

so a coordinate on its bound and an inactive row carry no derivative, and the
adjoint system is solved in the least-squares sense (`lineax.SVD`), which also
covers redundant rows. Warm-started from the previous multipliers (`dual0`), the
projections of an LV-HBA run on breast_cancer's SVM set take about three steps;
degenerate sets (many more active rows than free variables) take tens.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array

from .._display import fields_repr, status_name, summarize
from .._jit import EagerJit
from ..implicit import custom_root
from ..implicit.conditions import OptimalityCondition
from ._base import AbstractConstrainedSolver, iterate
from ._linesearch import backtrack
from ._minimize import raise_if_failed
from ._problem import RESULTS


class PolyhedralProjection(eqx.Module):
    """Result of `project_polyhedron`.

    - `y`: `(n,)` the projection.
    - `dual`: `(m + p,)` multipliers `(ν, μ)` of the equality then inequality rows
      (pass them as `dual0` to warm-start a nearby projection).
    - `num_steps`: Newton steps taken.
    - `residual`: `‖min(μ, -h)‖∞` and `‖e‖∞` at the end (the natural residual of
      the dual problem, in the constraints' units).
    - `result`: `RESULTS.successful`, `max_steps_reached`, `infeasible` (the dual
      diverges: the polyhedron is empty) or `nonfinite`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> projection = bx.solvers.project_polyhedron(
    ...     jnp.array([2.0, 0.0]), ineq=lambda v: jnp.array([v[0] + v[1] - 1.0])
    ... )
    >>> [round(v, 3) for v in projection.y.tolist() + projection.dual.tolist()]
    [1.5, -0.5, 0.5]

    ```
    """

    y: Array
    dual: Array
    num_steps: Array
    residual: Array
    result: RESULTS

    def __repr__(self):
        fields = {"result": status_name(self.result)}
        for k in ("num_steps", "residual", "y", "dual"):
            fields[k] = summarize(getattr(self, k))
        return fields_repr("PolyhedralProjection", fields)


def _rows(eq, ineq, dtype):
    def a(v):
        parts = [jnp.zeros(0, dtype)]
        parts += [f(v) for f in (eq, ineq) if f is not None]
        return jnp.concatenate(parts)

    return a


def _check_target(target) -> Array:
    if not isinstance(target, jax.Array | np.ndarray):
        raise TypeError(
            f"`target` must be a 1-D float array (flatten a pytree first, e.g. with "
            f"`jax.flatten_util.ravel_pytree`); got {type(target).__name__}."
        )
    target = jnp.asarray(target)
    if not jnp.issubdtype(target.dtype, jnp.floating):
        raise TypeError(f"`target` must be a float array, got {target.dtype}.")
    if target.ndim != 1:
        raise ValueError(f"`target` must be 1-D, got shape {target.shape}.")
    return target


def _check_bounds(bounds, n: int, dtype) -> tuple[Array, Array]:
    if bounds is None:
        return jnp.full((n,), -jnp.inf, dtype), jnp.full((n,), jnp.inf, dtype)
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise ValueError("`bounds` must be a pair `(lower, upper)` or None.")
    if any(jnp.ndim(b) > 1 or jnp.size(b) not in (1, n) for b in bounds):
        raise ValueError(
            f"`bounds`: `lower` and `upper` must be scalars or of shape ({n},) "
            f"like `target`; got shapes {[jnp.shape(b) for b in bounds]}."
        )
    lower, upper = (jnp.broadcast_to(jnp.asarray(b, dtype), (n,)) for b in bounds)
    return lower, upper


def project_polyhedron(
    target: Array,
    eq=None,
    ineq=None,
    bounds: tuple[Array, Array] | None = None,
    dual0: Array | None = None,
    *,
    tol: float | None = None,
    max_steps: int = 100,
    throw: bool = True,
) -> PolyhedralProjection:
    r"""Project `target` onto `{v : eq(v) = 0, ineq(v) <= 0, lower <= v <= upper}`.

    **Arguments:**

    - `target`: `(n,)` float array.
    - `eq`, `ineq`: affine maps `(n,) -> (m,)` and `(n,) -> (p,)`, or `None`. They
      must be affine: this is checked at run time (an error is raised otherwise).
    - `bounds`: `(lower, upper)`, each `(n,)` (`±inf` for none), or `None`.
    - `dual0`: `(m + p,)` starting multipliers (default zero).
    - `tol`: on the natural residual (default `1e-9` in float64, `1e-4` in
      float32); `max_steps`: Newton steps.
    - `throw` (default `True`): raise at run time (also under `jit`), naming the
      status, when the projection fails; `False` returns the status in `result`.

    **Returns:** a `PolyhedralProjection`. `y` (and `dual`) are differentiable
    with respect to `target`, `bounds` and the arrays `eq`/`ineq` close over, by
    the projection's KKT conditions (see the module docs); `jax.grad`,
    `jax.jacfwd`/`jacrev` and `jax.vmap` work. Compiled once per `eq`/`ineq`
    objects and shapes (`equinox.filter_jit`).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> projection = bx.solvers.project_polyhedron(
    ...     jnp.array([0.9, 0.8, -0.2]),
    ...     eq=lambda v: jnp.array([jnp.sum(v) - 1.0]),  # the probability simplex
    ...     bounds=(jnp.zeros(3), jnp.ones(3)),
    ... )
    >>> [round(v, 3) + 0.0 for v in projection.y.tolist()]
    [0.55, 0.45, 0.0]
    >>> halfplane = lambda c: bx.solvers.project_polyhedron(
    ...     c, ineq=lambda v: jnp.array([v[0] + v[1] - 1.0])
    ... ).y
    >>> print(jax.jacobian(halfplane)(jnp.array([2.0, 1.0])).round(3))
    [[ 0.5 -0.5]
     [-0.5  0.5]]

    ```
    """
    return _project(target, bounds, dual0, eq, ineq, tol, max_steps, throw)


def _kkt(eq, ineq):
    """The projection's KKT conditions in `(v, u)`, given `(target, lower,
    upper)`: `v = clip(t - Aᵀu)`, `e(v) = 0`, `where(μ > 0, h(v), μ) = 0`."""

    def fn(z, target, lower, upper):
        v, u = z
        a = _rows(eq, ineq, v.dtype)
        av, vjp = jax.vjp(a, v)
        m = 0 if eq is None else jax.eval_shape(eq, v).shape[0]
        is_eq = jnp.arange(u.shape[0]) < m
        primal = v - jnp.clip(target - vjp(u)[0], lower, upper)
        return primal, jnp.where(is_eq | (u > 0), av, u)

    return OptimalityCondition(fn)


# The checks run at trace time: an eager call with the same `eq`/`ineq` objects
# and shapes reruns nothing but the compiled program (no `eval_shape` of `eq`).
def _compiled_project(target, bounds, dual0, eq, ineq, tol, max_steps, throw):
    target = _check_target(target)
    dtype, n = target.dtype, target.shape[0]
    lower, upper = _check_bounds(bounds, n, dtype)
    rows = jax.eval_shape(_rows(eq, ineq, dtype), target).shape[0]
    dual0 = jnp.zeros((rows,), dtype) if dual0 is None else jnp.asarray(dual0, dtype)
    if dual0.shape != (rows,):
        raise ValueError(f"`dual0` must have shape ({rows},), got {dual0.shape}.")
    if tol is None:
        tol = 1e-9 if dtype == jnp.float64 else 1e-4

    @custom_root(_kkt(eq, ineq), lx.SVD(), has_aux=True, throw=False)
    def solve(z0, target, lower, upper):
        dual = _Dual(target, eq, ineq, lower, upper)
        key = jax.random.key(0)  # unused: the method is deterministic
        v, u, stats, result = iterate(_DualNewton(tol, max_steps), dual, z0[1], key)
        return (v, u), (stats, result)

    (y, dual), (stats, result) = solve((target, dual0), target, lower, upper)
    if throw:
        y = raise_if_failed(y, result, "project_polyhedron")
    return PolyhedralProjection(y, dual, stats["num_steps"], stats["residual"], result)


_project = EagerJit(_compiled_project, num_arrays=3, num_args=8)


class _Loop(eqx.Module):
    u: Array  # the multipliers
    v: Array  # v(u)
    av: Array  # a(v(u))
    value: Array  # D(u)
    residual: Array
    stuck: Array  # no progress at the last step


class _Dual(eqx.Module):
    """The dual function `D(u)` of the projection (the module docs)."""

    target: Array
    jac: Array
    a0: Array
    lower: Array
    upper: Array
    is_eq: Array

    def __init__(self, target, eq, ineq, lower, upper):
        dtype = target.dtype
        a = _rows(eq, ineq, dtype)
        rows, n = jax.eval_shape(a, target).shape[0], target.shape[0]
        self.target, self.lower, self.upper = target, lower, upper
        self.a0 = a(jnp.zeros_like(target))
        jac = jax.jacfwd(a)(target) if n <= rows else jax.jacrev(a)(target)
        self.jac = _check_affine(a, jnp.reshape(jac, (rows, n)), self.a0, target)
        m = 0 if eq is None else jax.eval_shape(eq, target).shape[0]
        self.is_eq = jnp.arange(rows) < m

    def clip_dual(self, u):
        return jnp.where(self.is_eq, u, jnp.maximum(u, 0.0))

    def evaluate(self, u, stuck) -> _Loop:
        v = jnp.clip(self.target - self.jac.T @ u, self.lower, self.upper)
        av = self.jac @ v + self.a0
        value = 0.5 * jnp.sum((v - self.target) ** 2) + u @ av
        residual = jnp.max(jnp.abs(self.clip_dual(u + av) - u), initial=0.0)
        return _Loop(u, v, av, value, residual, stuck)

    def too_large(self, u):
        """Multipliers far beyond any the data can explain: the dual is unbounded
        (the polyhedron is empty)."""
        eps = jnp.finfo(u.dtype).eps
        size = 1.0 + jnp.max(jnp.abs(self.target))
        size = size + jnp.max(jnp.abs(self.a0), initial=0.0)
        return jnp.max(jnp.abs(u), initial=0.0) > eps ** (-2 / 3) * size

    def direction(self, s: _Loop):
        """The semismooth Newton direction with the primal-dual active-set rule:
        inequality rows a diagonal Newton step would take below zero are set to
        zero, the others solve the linearised `a(v) = 0`."""
        dtype = s.u.dtype
        free = ((s.v > self.lower) & (s.v < self.upper)).astype(dtype)
        hess = (self.jac * free) @ self.jac.T
        eps = jnp.finfo(dtype).eps
        shift = eps ** (2 / 3) * (1.0 + jnp.max(jnp.diag(hess), initial=0.0))
        fixed = ~self.is_eq & (s.u + s.av / (jnp.diag(hess) + shift) <= 0)
        work = (~fixed).astype(dtype)
        system = hess * work[:, None] * work[None, :] + jnp.diag(1.0 - work)
        system = system + shift * jnp.eye(s.u.shape[0], dtype=dtype)
        factor = jax.scipy.linalg.cho_factor(system)
        rhs = work * (s.av + hess @ jnp.where(fixed, s.u, 0.0))
        return jnp.where(fixed, -s.u, jax.scipy.linalg.cho_solve(factor, rhs))


class _DualNewton(AbstractConstrainedSolver):
    """Semismooth Newton ascent on the dual `D(u)` (the module docs), from the
    multipliers `u0`."""

    tol: float
    max_steps: int

    def init(self, dual: _Dual, u0, key) -> _Loop:
        return dual.evaluate(u0, jnp.array(False))

    def step(self, dual: _Dual, s: _Loop, key) -> _Loop:
        d = dual.direction(s)
        slack = 10 * jnp.finfo(s.u.dtype).eps * jnp.abs(s.value)

        def accept(alpha):
            trial = dual.evaluate(dual.clip_dual(s.u + alpha * d), s.stuck)
            ascent = trial.value >= s.value + 1e-4 * s.av @ (trial.u - s.u) - slack
            # the full step is also taken when it shrinks the residual (the active
            # set changes, and D may dip on the way)
            return ascent | ((alpha == 1) & (trial.residual <= 0.5 * s.residual)), trial

        _, ok, trial = backtrack(accept, s.u.dtype, min_step=1e-10)
        # no Newton progress (a degenerate vertex): a projected gradient step
        # with step 1/‖A‖²_F always ascends
        lipschitz = jnp.maximum(jnp.sum(dual.jac**2), jnp.finfo(s.u.dtype).tiny)
        u = jnp.where(ok, trial.u, dual.clip_dual(s.u + s.av / lipschitz))
        new = dual.evaluate(u, jnp.array(False))
        return eqx.tree_at(lambda t: t.stuck, new, ~ok & (new.value <= s.value))

    def terminate(self, dual: _Dual, s: _Loop):
        converged = s.residual <= self.tol
        too_large = dual.too_large(s.u)
        result = RESULTS.where(converged, RESULTS.successful, RESULTS.max_steps_reached)
        result = RESULTS.where(too_large & ~converged, RESULTS.infeasible, result)
        finite = jnp.isfinite(s.value) & jnp.all(jnp.isfinite(s.v))
        result = RESULTS.where(finite, result, RESULTS.nonfinite)
        return converged | s.stuck | too_large | ~finite, result

    def postprocess(self, dual: _Dual, s: _Loop, result: RESULTS):
        return s.v, s.u, {"residual": s.residual}


def _check_affine(a, jac, a0, target):
    """`jac`, with a run-time error unless `a(v) = jac v + a0` at the target and
    one more point."""
    dtype = target.dtype
    probe = target + 1.0 + jnp.sin(jnp.arange(target.shape[0], dtype=dtype))
    mismatch = jnp.max(
        jnp.abs(jnp.stack([a(v) - (jac @ v + a0) for v in (target, probe)])),
        initial=0.0,
    )
    scale = 1.0 + jnp.max(jnp.abs(jac), initial=0.0) * (1.0 + jnp.max(jnp.abs(probe)))
    eps = jnp.finfo(dtype).eps
    return eqx.error_if(
        jac,
        mismatch > 1e3 * jnp.sqrt(eps) * scale,
        "project_polyhedron: `eq`/`ineq` are not affine.",
    )
