r"""LV-HBA (Yao, Yu, Zeng, Zhang, ICLR 2024, "Constrained bi-level optimization:
proximal Lagrangian value function approach and Hessian-free algorithm").

For `min_{x ∈ X, y ∈ Y} f(x, y)` subject to
`y ∈ argmin_{θ ∈ Y} {g(x, θ) : c(x, θ) <= 0}`, the proximal Lagrangian value function

    v_γ(x, y, z) = min_{θ ∈ Y} max_{λ >= 0} g(x, θ) + λᵀc(x, θ) + ‖θ - y‖²/(2γ1)
                   - ‖λ - z‖²/(2γ2)

is smooth, `g - v_γ >= 0` on the feasible set `C = {(x, y) ∈ X × Y : c(x, y) <= 0}`,
and LV-HBA runs single-loop projected gradient steps on `f/c_k + g - v_γ`, tracking
the inner `(θ, λ)` of `v_γ` by one projected gradient step each (first-order
oracles only, no Hessians):

1. `θ ← P_Y(θ - η d_θ)`, `λ ← P_Z(λ - η d_λ)` with
   `d_θ = ∇_θ g(x, θ) + ∇_θ c(x, θ)ᵀλ + (θ - y)/γ1`, `d_λ = -c(x, θ) + (λ - z)/γ2`;
2. `(x, y) ← P_C((x, y) - α (d_x, d_y))` with
   `d_x = ∇_x f/c_k + ∇_x g(x, y) - ∇_x g(x, θ) - ∇_x c(x, θ)ᵀλ`,
   `d_y = ∇_y f/c_k + ∇_y g(x, y) - (y - θ)/γ1`;
3. `z ← P_Z(z - β (z - λ)/γ2)`;

`c_k = penalty (k + 1)^power` with `power ∈ (0, 1/2)`. Lower-level equalities
`e(x, θ) = 0` enter like the inequalities with free multipliers. The multiplier set
is the box `Z = [0, r]` per inequality and `[-r, r]` per equality
(`r = multiplier_radius`), as the authors' code clips, instead of the paper's ball.
`γ` divides, as in the paper (some of the authors' scripts multiply).
"""

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_axpy as _axpy, tree_norm
from ..solvers import (
    RESULTS,
    AugmentedLagrangian,
    ConstrainedProblem,
    minimize,
    project_polyhedron,
)
from ._constants import top_eigenvalue
from ._problem import BilevelData, BilevelProblem, as_data, sample_batch
from ._run import AbstractBilevelAlgorithm, StepInfo
from .sets import AbstractSet, Everything


class _LVHBAState(eqx.Module):
    # what `History.inner_residual` holds for LV-HBA, by name in a result's repr
    inner_residual_name: ClassVar[str] = "value_function_gap"
    x: PyTree[Array]
    y: PyTree[Array]
    theta: PyTree[Array]  # the inner variable of v_γ
    lam: Array  # its multiplier
    z: Array  # the proximal centre of the multiplier
    dual: Array  # multipliers of the last projection onto C (`affine=True`)
    k: Array
    params: "_Params"


class _Params(eqx.Module):
    """The steps, proximal parameters and penalty base in use (the user's or the
    derived defaults)."""

    alpha: Array
    beta: Array
    eta: Array
    gamma1: Array
    gamma2: Array
    penalty: Array


def _joint_lipschitz(fn, x, y):
    """`λ_max` of the Hessian of `fn` in `(x, y)` jointly."""
    grad = jax.grad(lambda w: fn(*w))
    return top_eigenvalue(lambda v: jax.jvp(grad, ((x, y),), (v,))[1], (x, y))


def _constraint_norm(constraint, x, y):
    """`‖∂c/∂(x, y)‖` (1 without constraints)."""
    if jax.eval_shape(constraint, x, y).shape[0] == 0:
        return jnp.ones((), jnp.result_type(*jtu.tree_leaves(y)))
    _, vjp = jax.vjp(lambda w: constraint(*w), (x, y))
    gram = lambda v: vjp(jax.jvp(lambda w: constraint(*w), ((x, y),), (v,))[1])[0]
    return jnp.sqrt(top_eigenvalue(gram, (x, y)))


def _flat_constraints(constraint, equality, outer_set, inner_set, x, y):
    """`C` as constraints on `w = ravel((x, y))`: `(unravel, bounds, eq, ineq)`
    with `bounds = (lower, upper)` or `None` and `eq(w)`, `ineq(w)` or `None`."""
    target, unravel = jfu.ravel_pytree((x, y))
    nx = jfu.ravel_pytree(x)[0].size
    cx, cy = outer_set.constraints(x), inner_set.constraints(y)
    inf = jnp.full_like(target, jnp.inf)
    lower, upper = -inf, inf
    parts = ((cx, slice(0, nx)), (cy, slice(nx, None)))
    for part, sl in parts:
        if part.bounds is not None:
            lower = lower.at[sl].set(part.bounds[0])
            upper = upper.at[sl].set(part.bounds[1])
    pieces_eq = [(part.eq, sl) for part, sl in parts if part.eq is not None]
    pieces_in = [(part.ineq, sl) for part, sl in parts if part.ineq is not None]
    if constraint is not None:
        pieces_in.insert(0, (constraint, None))
    if equality is not None:
        pieces_eq.insert(0, (equality, None))

    def rows(pieces):
        if not pieces:
            return None
        return lambda w: jnp.concatenate(
            [
                jfu.ravel_pytree(f(*unravel(w)) if sl is None else f(w[sl]))[0]
                for f, sl in pieces
            ]
        )

    bounded = cx.bounds is not None or cy.bounds is not None
    return (
        unravel,
        (lower, upper) if bounded else None,
        rows(pieces_eq),
        rows(pieces_in),
    )


def _checked(w, result):
    """`w`, with a run-time error if the projection's `result` says C is empty or
    the solve hit NaN."""
    failed = (result == RESULTS.infeasible) | (result == RESULTS.nonfinite)
    return eqx.error_if(
        jax.lax.stop_gradient(w),
        failed,
        "The projection onto the feasible set C = {(x, y) in X x Y: c(x, y) <= 0, "
        "e(x, y) = 0} failed: the constraints are infeasible (or NaN).",
    )


def coupled_projection(
    constraint: Callable | None,
    outer_set: AbstractSet,
    inner_set: AbstractSet,
    equality: Callable | None = None,
    solver: AugmentedLagrangian = AugmentedLagrangian(),  # noqa: B008
) -> Callable:
    """The Euclidean projection onto
    `C = {(x, y) ∈ X × Y : c(x, y) <= 0, e(x, y) = 0}`.

    Without `constraint` and `equality` it is `(P_X(x), P_Y(y))`; otherwise it
    solves `min ½‖(x', y') - (x, y)‖²` over `C` with `solver` (the sets enter as
    bounds or constraints, see `sets.AbstractSet.constraints`), from
    `(P_X(x), P_Y(y))`. Not differentiated (LV-HBA only needs its value). For
    affine `c` and `e`, `affine_projection` is exact and much faster.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> sets = bx.bilevel.sets
    >>> project = bx.bilevel.coupled_projection(
    ...     lambda x, y: jnp.array([jnp.sum(y**2) - x[0]]),  # ‖y‖² <= x, x ∈ [0, 4]
    ...     sets.Box(0.0, 4.0),
    ...     sets.Everything(),
    ... )
    >>> x, y = project(jnp.array([5.0]), jnp.array([3.0, 0.0]))
    >>> print(x.round(2), y.round(2))
    [4.] [2. 0.]

    ```
    """
    if constraint is None and equality is None:
        return lambda x, y: (outer_set.project(x), inner_set.project(y))

    def project(x, y):
        unravel, bounds, eq, ineq = _flat_constraints(
            constraint, equality, outer_set, inner_set, x, y
        )
        target = jfu.ravel_pytree((x, y))[0]
        w0 = jfu.ravel_pytree((outer_set.project(x), inner_set.project(y)))[0]
        problem = ConstrainedProblem(
            lambda w, t: 0.5 * jnp.sum((w - t) ** 2),
            eq=None if eq is None else lambda w, _: eq(w),
            ineq=None if ineq is None else lambda w, _: ineq(w),
            bounds=bounds,
        )
        sol = minimize(problem, w0, jax.lax.stop_gradient(target), solver, throw=False)
        return unravel(_checked(sol.y, sol.result))

    return project


def affine_projection(
    constraint: Callable | None,
    outer_set: AbstractSet,
    inner_set: AbstractSet,
    equality: Callable | None = None,
) -> Callable:
    """The exact projection onto `C` when `c` and `e` are affine in `(x, y)` and
    `X`, `Y` are boxes, orthants or simplices: `project(x, y, dual) -> (x, y,
    dual)` by `bilevax.solvers.project_polyhedron`, warm-started from the
    multipliers `dual` of the previous projection (start with zeros of size
    `m + p`, the number of equality plus inequality rows).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> sets = bx.bilevel.sets
    >>> project = bx.bilevel.affine_projection(
    ...     lambda x, y: y - x, sets.Box(0.0, 1.0), sets.Everything()
    ... )  # C = {(x, y): y <= x, x ∈ [0, 1]}
    >>> x, y, dual = project(jnp.array([2.0]), jnp.array([3.0]), jnp.zeros(1))
    >>> print(x.round(3), y.round(3))
    [1.] [1.]

    ```
    """

    def project(x, y, dual):
        for s, v in ((outer_set, x), (inner_set, y)):
            if s.constraints(v).ineq is not None:
                raise ValueError(
                    f"`affine=True` needs X and Y given by bounds and affine "
                    f"equalities; {type(s).__name__} is not. Use `affine=False`."
                )
        unravel, bounds, eq, ineq = _flat_constraints(
            constraint, equality, outer_set, inner_set, x, y
        )
        target = jfu.ravel_pytree((x, y))[0]
        sol = project_polyhedron(target, eq, ineq, bounds, dual, throw=False)
        return (*unravel(_checked(sol.y, sol.result)), sol.dual)

    return project


class LVHBA(AbstractBilevelAlgorithm):
    r"""LV-HBA: single-loop, Hessian-free bilevel optimisation with a constrained
    lower level (see the module docs for the updates).

    The problem's `inner_constraints(x, y) -> (p,)` are the lower-level constraints
    `c(x, y) <= 0` and `inner_equalities(x, y) -> (m,)` its equalities, which may
    couple `x` and `y`; without them the method still applies (`λ` is then
    empty).

    **Arguments** (defaults derived from the problem, see below):

    - `alpha`: step of `(x, y)`; `beta`: step of `z`; `eta`: step of `(θ, λ)`.
    - `gamma1`, `gamma2`: proximal parameters of `v_γ`.
    - `penalty`, `power` (0.3): `c_k = penalty (k+1)^power`.
    - `multiplier_radius` (1e3): bound `r` of the multiplier set `Z`.
    - `multiplier0` (0): starting `λ` and `z` (projected onto `Z`).
    - `outer_set`, `inner_set`: `X` and `Y` (`sets.Box`, `sets.Ball`,
      `sets.Simplex`, `sets.NonNegative`, `sets.Projection`, default the whole
      space).
    - `affine` (False): `c` and `e` are affine in `(x, y)` and `X`, `Y` are
      boxes, orthants or simplices: project onto `C` exactly and fast with
      `affine_projection` (dual Newton, warm-started across iterations).
    - `projection`: optional `(x, y) -> (x, y)` onto `C`; by default
      `coupled_projection` (closed form without coupling constraints, an
      augmented-Lagrangian solve with them) or `affine_projection`.
    - `batch_size`: minibatch size for the stochastic form (`None`: full data).

    The state starts from `(x0, y0)` projected onto `C`, `θ0 = y0`.

    **Defaults from the problem** (the authors' toy settings, `α = 0.008`,
    `β = 0.02`, `η = 0.01`, `γ = 10`, `c̲ = 0.025`, fit problems of unit scale
    only). At the projected start, on the whole data, power iteration gives
    `ℓ_f`, `ℓ_g` (largest eigenvalues of the Hessians of `f` and `g` in `(x, y)`
    jointly) and `ℓ_c = ‖∂c/∂(x, y)‖` (1 without constraints); with
    `ρ = 0.5` (0.1 with minibatches, whose noise neighbourhood scales with the
    steps):

    - `gamma1 = 10 / ℓ_g` (the proximal term a tenth of `g`'s curvature),
      `gamma2 = gamma1`;
    - `penalty = ℓ_f / ℓ_g` (`f / c_k` and `g` on the same scale at the start);
    - `alpha = ρ / (ℓ_f / penalty + ℓ_g + 1/γ1)` (the smoothness of the `(x, y)`
      objective `f/c_0 + g - v_γ`), `eta = ρ / (ℓ_g + 1/γ1 + ℓ_c)` (that of the
      `(θ, λ)` saddle), `beta = 2 eta` (the authors' ratio).

    Each given value overrides its default.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = min(x, 4); the solution is x = 2
    ...     outer=lambda x, y, b: 0.5 * (jnp.sum((x - 1) ** 2) + jnp.sum((y - 3) ** 2)),
    ...     inner=lambda x, y, b: jnp.sum(0.5 * y**2 - 4 * y),
    ...     inner_constraints=lambda x, y: y - x,  # c(x, y) <= 0
    ... )
    >>> x0, y0 = jnp.zeros(1), jnp.zeros(1)
    >>> result = bx.bilevel.LVHBA().run(problem, x0, y0, num_steps=6000)
    >>> print(result.x.round(2), result.y.round(2))
    [2.] [2.]

    ```
    """

    alpha: float | None = None
    beta: float | None = None
    eta: float | None = None
    gamma1: float | None = None
    gamma2: float | None = None
    penalty: float | None = None
    power: float = 0.3
    multiplier_radius: float = 1e3
    multiplier0: float = 0.0
    outer_set: AbstractSet = Everything()
    inner_set: AbstractSet = Everything()
    affine: bool = False
    projection: Callable | None = None
    batch_size: int | None = None

    def __check_init__(self):
        if not 0 < self.power < 0.5:
            raise ValueError(f"`power` must lie in (0, 1/2), got {self.power}.")
        for name in ("alpha", "beta", "eta", "gamma1", "gamma2", "penalty"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"`{name}` must be positive.")

    def _project_c(self, problem: BilevelProblem, x, y, dual):
        """`(x, y, dual) -> (P_C(x, y), dual)`; `dual` only used by `affine`."""
        if self.projection is not None:
            return (*self.projection(x, y), dual)
        sets = (self.outer_set, self.inner_set, problem.inner_equalities)
        if self.affine:
            return affine_projection(problem.inner_constraints, *sets)(x, y, dual)
        return (*coupled_projection(problem.inner_constraints, *sets)(x, y), dual)

    def _dual_size(self, problem, x, y):
        """Rows of `C` as `project_polyhedron` sees them (0 unless `affine`)."""
        if not self.affine or self.projection is not None:
            return 0
        _, _, eq, ineq = _flat_constraints(
            problem.inner_constraints,
            problem.inner_equalities,
            self.outer_set,
            self.inner_set,
            x,
            y,
        )
        w = jfu.ravel_pytree((x, y))[0]
        return sum(jax.eval_shape(f, w).shape[0] for f in (eq, ineq) if f is not None)

    def _constraint(self, problem, x, y):
        """`(e(x, y), c(x, y))` as one vector (equalities first)."""
        rows = [jnp.zeros(0, jnp.result_type(*jtu.tree_leaves(y)))]
        for fn in (problem.inner_equalities, problem.inner_constraints):
            if fn is not None:
                rows.append(jfu.ravel_pytree(fn(x, y))[0])
        return jnp.concatenate(rows)

    def _multiplier_projection(self, problem, x, y):
        """`P_Z`: `[-r, r]` on the equality rows, `[0, r]` on the inequality rows
        (shapes only: nothing is evaluated)."""
        m = 0
        if problem.inner_equalities is not None:
            m = jax.eval_shape(problem.inner_equalities, x, y).shape[0]
        p = jax.eval_shape(lambda: self._constraint(problem, x, y)).shape[0]
        r = self.multiplier_radius
        lower = jnp.where(jnp.arange(p) < m, -r, 0.0)
        return lambda v: jnp.clip(v, lower, r)

    def init(self, problem, x0, y0, data, key):
        dtype = jnp.result_type(*jtu.tree_leaves(y0))
        dual = jnp.zeros((self._dual_size(problem, x0, y0),), dtype)
        x, y, dual = self._project_c(problem, x0, y0, dual)
        project = self._multiplier_projection(problem, x, y)
        p = jax.eval_shape(lambda: self._constraint(problem, x, y)).shape[0]
        lam = project(jnp.full((p,), self.multiplier0, dtype))
        params = self._params(problem, x, y, as_data(data), dtype)
        return _LVHBAState(x, y, y, lam, lam, dual, jnp.array(0), params)

    def _params(self, problem, x, y, data, dtype) -> _Params:
        """The user's values, else the defaults derived at the start (module docs)."""
        user = lambda name: getattr(self, name)
        if all(user(n) is not None for n in _Params.__annotations__):
            return _Params(
                *(jnp.asarray(user(n), dtype) for n in _Params.__annotations__)
            )
        x, y = jax.lax.stop_gradient((x, y))
        lip_f = _joint_lipschitz(lambda a, b: problem.outer(a, b, data.outer), x, y)
        lip_g = _joint_lipschitz(lambda a, b: problem.inner(a, b, data.inner), x, y)
        lip_c = _constraint_norm(lambda a, b: self._constraint(problem, a, b), x, y)
        pick = lambda name, value: jnp.asarray(
            value if user(name) is None else user(name), dtype
        )
        # smaller steps for minibatches: the noise neighbourhood scales with them
        frac = 0.5 if self.batch_size is None else 0.1
        gamma1 = pick("gamma1", 10 / lip_g)
        gamma2 = pick("gamma2", gamma1)
        penalty = pick("penalty", lip_f / lip_g)
        eta = pick("eta", frac / (lip_g + 1 / gamma1 + lip_c))
        return _Params(
            alpha=pick("alpha", frac / (lip_f / penalty + lip_g + 1 / gamma1)),
            beta=pick("beta", 2 * eta),
            eta=eta,
            gamma1=gamma1,
            gamma2=gamma2,
            penalty=penalty,
        )

    def iterates(self, state):
        return state.x, state.y

    def inner_residual(self, problem, state: _LVHBAState, data: BilevelData):
        """The value-function gap `g(x, y) - v_γ(x, y, z)` on the whole data, the
        residual LV-HBA's convergence is judged on: `>= 0` on the feasible set
        and 0 when `y` solves the constrained lower level, so small is good.
        `v_γ` is evaluated at the tracked `(θ, λ)` (one projected step per
        iteration), so the value is an estimate: it may dip slightly below 0
        while `(θ, λ)` lag behind."""
        x, y, theta, lam, z = state.x, state.y, state.theta, state.lam, state.z
        p = state.params
        g = lambda w: problem.inner(x, w, data.inner)
        proximal = tree_norm(jtu.tree_map(jnp.subtract, theta, y)) ** 2
        value = (
            g(theta)
            + lam @ self._constraint(problem, x, theta)
            + proximal / (2 * p.gamma1)
            - jnp.sum((lam - z) ** 2) / (2 * p.gamma2)
        )
        return g(y) - value

    def step(self, problem, state: _LVHBAState, data: BilevelData, key: Array):
        """One LV-HBA iteration (see the module docs)."""
        x, y, theta, lam, z = state.x, state.y, state.theta, state.lam, state.z
        dtype = jnp.result_type(*jtu.tree_leaves(x))
        p = state.params
        c_k = p.penalty * (state.k.astype(dtype) + 1) ** self.power
        k_inner, k_theta, k_outer = jax.random.split(key, 3)
        inner_batch = sample_batch(data.inner, k_inner, self.batch_size)
        theta_batch = sample_batch(data.inner, k_theta, self.batch_size)
        outer_batch = sample_batch(data.outer, k_outer, self.batch_size)
        g = problem.inner
        constraint = lambda x, t: self._constraint(problem, x, t)

        def lagrangian(x, t, lam):  # g + λᵀc at the inner variable θ
            return g(x, t, theta_batch) + lam @ constraint(x, t)

        # 1. one projected step on (θ, λ) at the old point
        d_theta = _axpy(
            1 / p.gamma1,
            jtu.tree_map(jnp.subtract, theta, y),
            jax.grad(lagrangian, argnums=1)(x, theta, lam),
        )
        d_lam = -constraint(x, theta) + (lam - z) / p.gamma2
        theta = self.inner_set.project(_axpy(-p.eta, d_theta, theta))
        project_z = self._multiplier_projection(problem, x, y)
        lam = project_z(lam - p.eta * d_lam)
        # 2. projected step on (x, y) with the new θ, λ
        fx, fy = jax.grad(problem.outer, argnums=(0, 1))(x, y, outer_batch)
        gx, gy = jax.grad(g, argnums=(0, 1))(x, y, inner_batch)
        lx = jax.grad(lagrangian, argnums=0)(x, theta, lam)
        d_x = jtu.tree_map(lambda a, b, c: a / c_k + b - c, fx, gx, lx)
        d_y = jtu.tree_map(
            lambda a, b, yy, t: a / c_k + b - (yy - t) / p.gamma1, fy, gy, y, theta
        )
        x, y, dual = self._project_c(
            problem, _axpy(-p.alpha, d_x, x), _axpy(-p.alpha, d_y, y), state.dual
        )
        # 3. the multiplier's proximal centre
        z = project_z(z - p.beta * (z - lam) / p.gamma2)
        new = _LVHBAState(x, y, theta, lam, z, dual, state.k + 1, p)
        return new, StepInfo(tree_norm((d_x, d_y)))
