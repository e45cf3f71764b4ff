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
Cholesky factorisation. Warm-started from the previous multipliers (`dual0`), the
projections of an LV-HBA run on breast_cancer's SVM set take about three steps;
degenerate sets (many more active rows than free variables) take tens.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._display import fields_repr, status_name, summarize
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


def project_polyhedron(
    target: Array,
    eq=None,
    ineq=None,
    bounds: tuple[Array, Array] | None = None,
    dual0: Array | None = None,
    *,
    tol: float | None = None,
    max_steps: int = 100,
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

    **Returns:** a `PolyhedralProjection`. Not differentiated (stop-gradient on
    every input): it is meant for projected methods such as `LVHBA`.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> projection = bx.solvers.project_polyhedron(
    ...     jnp.array([0.9, 0.8, -0.2]),
    ...     eq=lambda v: jnp.array([jnp.sum(v) - 1.0]),  # the probability simplex
    ...     bounds=(jnp.zeros(3), jnp.ones(3)),
    ... )
    >>> [round(v, 3) + 0.0 for v in projection.y.tolist()]
    [0.55, 0.45, 0.0]

    ```
    """
    if not isinstance(target, jax.Array | np.ndarray):
        raise TypeError(
            f"`target` must be a 1-D float array (flatten a pytree first, e.g. with "
            f"`jax.flatten_util.ravel_pytree`); got {type(target).__name__}."
        )
    target = jax.lax.stop_gradient(jnp.asarray(target))
    if not jnp.issubdtype(target.dtype, jnp.floating):
        raise TypeError(f"`target` must be a float array, got {target.dtype}.")
    if target.ndim != 1:
        raise ValueError(f"`target` must be 1-D, got shape {target.shape}.")
    dtype = target.dtype
    n = target.shape[0]
    if bounds is None:
        lower = jnp.full((n,), -jnp.inf, dtype)
        upper = jnp.full((n,), jnp.inf, dtype)
    else:
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            raise ValueError("`bounds` must be a pair `(lower, upper)` or None.")
        if any(jnp.ndim(b) > 1 or jnp.size(b) not in (1, n) for b in bounds):
            raise ValueError(
                f"`bounds`: `lower` and `upper` must be scalars or of shape ({n},) "
                f"like `target`; got shapes {[jnp.shape(b) for b in bounds]}."
            )
        lower, upper = (jnp.broadcast_to(jnp.asarray(b, dtype), (n,)) for b in bounds)
    a = _rows(eq, ineq, dtype)
    m = 0 if eq is None else jax.eval_shape(eq, target).shape[0]
    rows = jax.eval_shape(a, target).shape[0]
    dual0 = jnp.zeros((rows,), dtype) if dual0 is None else jnp.asarray(dual0, dtype)
    if dual0.shape != (rows,):
        raise ValueError(f"`dual0` must have shape ({rows},), got {dual0.shape}.")
    if tol is None:
        tol = 1e-9 if dtype == jnp.float64 else 1e-4
    eps = jnp.finfo(dtype).eps
    is_eq = jnp.arange(rows) < m

    a0 = a(jnp.zeros_like(target))
    jac = jax.jacfwd(a)(target) if n <= rows else jax.jacrev(a)(target)
    jac = jnp.reshape(jac, (rows, n))
    # `a` must be affine: compare it with `A v + a₀` at the target and one more point
    probe = target + 1.0 + jnp.sin(jnp.arange(n, dtype=dtype))
    mismatch = jnp.max(
        jnp.abs(jnp.stack([a(v) - (jac @ v + a0) for v in (target, probe)])),
        initial=0.0,
    )
    scale = 1.0 + jnp.max(jnp.abs(jac), initial=0.0) * (1.0 + jnp.max(jnp.abs(probe)))
    jac = eqx.error_if(
        jac,
        mismatch > 1e3 * jnp.sqrt(eps) * scale,
        "project_polyhedron: `eq`/`ineq` are not affine.",
    )

    lipschitz = jnp.maximum(jnp.sum(jac**2), jnp.finfo(dtype).tiny)
    clip_dual = lambda u: jnp.where(is_eq, u, jnp.maximum(u, 0.0))

    def primal(u):
        return jnp.clip(target - jac.T @ u, lower, upper)

    def dual_value(u, v, av):
        return 0.5 * jnp.sum((v - target) ** 2) + u @ av

    def residual(u, av):
        return jnp.max(jnp.abs(clip_dual(u + av) - u), initial=0.0)

    def evaluate(u):
        v = primal(u)
        av = jac @ v + a0
        return v, av, dual_value(u, v, av), residual(u, av)

    # multipliers far beyond any the data can explain: the dual is unbounded
    size = 1.0 + jnp.max(jnp.abs(target)) + jnp.max(jnp.abs(a0), initial=0.0)
    too_large = lambda u: jnp.max(jnp.abs(u), initial=0.0) > eps ** (-2 / 3) * size

    # loop state: (u, (v, a(v), D(u), residual) at u, steps, no progress)
    def cond(s):
        u, (_, _, value, res), k, stuck = s
        running = (k < max_steps) & (res > tol) & ~stuck & ~too_large(u)
        return running & jnp.isfinite(value)

    def body(s):
        u, (v, av, value, res), k, _ = s
        free = ((v > lower) & (v < upper)).astype(dtype)
        hess = (jac * free) @ jac.T
        shift = eps ** (2 / 3) * (1.0 + jnp.max(jnp.diag(hess), initial=0.0))
        # primal-dual active set: the inequality rows a diagonal Newton step would
        # take below zero are set to zero, the others solve a(v) = 0 (linearised)
        fixed = ~is_eq & (u + av / (jnp.diag(hess) + shift) <= 0)
        work = (~fixed).astype(dtype)
        system = hess * work[:, None] * work[None, :] + jnp.diag(1.0 - work)
        system = system + shift * jnp.eye(rows, dtype=dtype)
        factor = jax.scipy.linalg.cho_factor(system)
        rhs = work * (av + hess @ jnp.where(fixed, u, 0.0))
        direction = jax.scipy.linalg.cho_solve(factor, rhs)
        direction = jnp.where(fixed, -u, direction)

        def search(ls):
            alpha, _, _ = ls
            trial = clip_dual(u + alpha * direction)
            _, _, trial_value, trial_res = evaluate(trial)
            slack = 10 * eps * jnp.abs(value)
            ascent = trial_value >= value + 1e-4 * av @ (trial - u) - slack
            # the full step is also taken when it shrinks the residual (the active
            # set changes, and D may dip on the way)
            ok = ascent | ((alpha == 1) & (trial_res <= 0.5 * res))
            return alpha / 2, trial, ok

        def searching(ls):
            alpha, _, ok = ls
            return ~ok & (alpha > 1e-10)

        _, u_new, ok = jax.lax.while_loop(
            searching, search, search((jnp.array(1.0, dtype), u, jnp.array(False)))
        )
        # no Newton progress (a degenerate vertex): a projected gradient step
        # with step 1/‖A‖²_F always ascends
        u_new = jnp.where(ok, u_new, clip_dual(u + av / lipschitz))
        new = evaluate(u_new)
        return u_new, new, k + 1, ~ok & (new[2] <= value)

    u, (y, _, value, res), steps, _ = jax.lax.while_loop(
        cond, body, (dual0, evaluate(dual0), jnp.array(0), jnp.array(False))
    )
    diverged = too_large(u)
    result = RESULTS.where(
        res <= tol,
        RESULTS.successful,
        RESULTS.where(diverged, RESULTS.infeasible, RESULTS.max_steps_reached),
    )
    finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(y))
    result = RESULTS.where(finite, result, RESULTS.nonfinite)
    return PolyhedralProjection(y, u, steps, res, result)
