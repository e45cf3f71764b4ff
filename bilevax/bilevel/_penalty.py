r"""Fully first-order bilevel methods built on the value-function penalty.

With `g*(x) = min_z g(x, z)` and `L_λ(x, y) = f(x, y) + λ (g(x, y) - g*(x))`,
the function `L*_λ(x) = min_y L_λ(x, y)` has gradient

    ∇L*_λ(x) = ∇_x f(x, y_λ) + λ (∇_x g(x, y_λ) - ∇_x g(x, z*)),

`y_λ = argmin_y L_λ(x, ·)`, `z* = argmin_z g(x, ·)`, and `‖∇L*_λ - ∇F‖ = O(1/λ)`.
Only gradients of `f` and `g` are needed. Each outer step runs a few gradient
steps on `z` (for `g`) and on `y` (for `f + λ g`) from their previous values, then
a step on `x` along the estimate above (independent minibatches for every
gradient in the stochastic form).

`variance_reduction="svrg"` (Johnson & Zhang, NeurIPS 2013) replaces every
minibatch gradient `∇φ(w; B)` by `∇φ(w; B) - ∇φ(w̃; B) + ∇φ(w̃)`, with an anchor
`w̃ = (x̃, ỹ, z̃)` and its full-data gradients refreshed every `snapshot_every`
steps (default: one pass over the data). On finite sums this removes the noise
floor of constant steps: the iterates converge to the penalised solution instead
of a neighbourhood of it, at the price of two minibatch gradients per oracle and
one full gradient per snapshot.

- `F2SA` (Kwon, Kwon, Wright, Nowak, ICML 2023): `λ_k → ∞` on a schedule, with
  decaying step sizes whose exponents depend on where the noise is.
- `PenaltyMethod` (Kwon et al., ICLR 2024; V-PBGD of Shen & Chen, ICML 2023): the
  penalty `λ = γ` ramps up to a fixed `γ_max` (`σ = 1/γ_max`), constant steps,
  optional projection of `x`.
"""

import abc
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, PyTree

from ..implicit._tree import tree_axpy as _axpy, tree_norm
from . import _constants
from ._inner import LBFGS, smoothness
from ._problem import BilevelData, num_samples, sample_batch
from ._run import AbstractBilevelAlgorithm, StepInfo


class _PenaltyState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]  # tracks y_λ = argmin f + λ g
    z: PyTree[Array]  # tracks z* = argmin g
    lip_f: Array  # smoothness of f in y
    lip_g: Array  # smoothness of g in y
    opt_state: PyTree  # of the optional optax optimizer of x
    k: Array
    anchor: "_Anchor | None"  # SVRG anchor (None without variance reduction)
    penalty: Array  # Λ: the user's λ, or the one derived from the constants
    y_steps: Array  # inner steps per outer step (the user's, or from κ_g)
    z_steps: Array
    guard: "_Guard"


class _Guard(eqx.Module):
    """The default `x` step `scale / L_h` and its safeguard: `L_h` is re-estimated
    when `x` has moved far from `x_ref`, and `scale` halves whenever the direction's
    norm exceeds ten times the smallest seen since the last halving."""

    lip_h: Array
    x_ref: PyTree[Array]
    scale: Array
    best: Array


class _Anchor(eqx.Module):
    """SVRG anchor: the points and their full-data gradients `(∇_x, ∇_y)`."""

    x: PyTree[Array]
    y: PyTree[Array]
    z: PyTree[Array]
    grad_g_at_z: tuple
    grad_g_at_y: tuple
    grad_f_at_y: tuple


def _anchor(problem, x, y, z, data: BilevelData) -> _Anchor:
    grad_f = jax.grad(problem.outer, argnums=(0, 1))
    grad_g = jax.grad(problem.inner, argnums=(0, 1))
    return _Anchor(
        x,
        y,
        z,
        grad_g(x, z, data.inner),
        grad_g(x, y, data.inner),
        grad_f(x, y, data.outer),
    )


def _estimate(fn, argnum, x, w, batch, anchor_x, anchor_w, anchor_grad):
    """`∇φ(x, w; B)` in argument `argnum`, SVRG-corrected when there is an anchor."""
    grad = jax.grad(fn, argnums=argnum)
    current = grad(x, w, batch)
    if anchor_grad is None:
        return current
    reference = grad(anchor_x, anchor_w, batch)
    return jtu.tree_map(
        lambda c, r, a: c - r + a, current, reference, anchor_grad[argnum]
    )


def _solve_inner(problem, x, y0, data):
    """`z* = argmin g(x, ·)` on the whole data (L-BFGS, to a gradient norm
    `√eps` times the starting one), without gradient."""
    x, y0 = jax.lax.stop_gradient((x, y0))
    g = lambda x_, y: problem.inner(x_, y, data.inner)
    dtype = jnp.result_type(*jtu.tree_leaves(y0))
    start = tree_norm(jax.grad(g, argnums=1)(x, y0))
    tol = jnp.sqrt(jnp.finfo(dtype).eps) * jnp.maximum(start, 1e-30)
    z, _ = LBFGS(num_steps=1000).solve(g, y0, x, tol)
    return jtu.tree_map(lambda a, b: jnp.where(jnp.isfinite(a), a, b), z, y0)


class _AbstractPenaltyAlgorithm(AbstractBilevelAlgorithm):
    """The outer step shared by F2SA and the penalty method; subclasses give the
    schedules of `λ` and the step sizes, and the numbers of inner steps."""

    lr_inner: eqx.AbstractVar[float]
    lr_outer: eqx.AbstractVar[float | None]
    batch_size: eqx.AbstractVar[int | None]
    optimizer: eqx.AbstractVar[optax.GradientTransformation | None]
    variance_reduction: eqx.AbstractVar[Literal["svrg"] | None]
    snapshot_every: eqx.AbstractVar[int | None]

    def __check_init__(self):
        if self.variance_reduction not in (None, "svrg"):
            raise ValueError(
                "`variance_reduction` must be None or 'svrg', got "
                f"{self.variance_reduction!r}."
            )

    def _reduces_variance(self) -> bool:
        return self.variance_reduction is not None and self.batch_size is not None

    def _snapshot_every(self, data: BilevelData) -> int:
        if self.snapshot_every is not None:
            return self.snapshot_every
        n = max(
            num_samples(data.inner, "inner") or 1,
            num_samples(data.outer, "outer") or 1,
        )
        return max(1, -(-n // self.batch_size))

    @abc.abstractmethod
    def _schedule(self, k: Array, penalty: Array) -> tuple[Array, Array, Array]:
        """`(λ_k, inner rate, x step factor)` at outer step `k` (a float), with `Λ =
        penalty` the base penalty; the `x` step is the factor times `lr_outer`, or
        times the safeguarded `1/L_h` when `lr_outer` is None."""

    @abc.abstractmethod
    def _inner_steps(self) -> tuple[int | None, int | None]:
        """Gradient steps per outer step on `y` and on `z` (None: derived)."""

    @abc.abstractmethod
    def _user_penalty(self) -> float | None:
        """The user's base penalty `Λ`, or None to derive it from the constants."""

    def _project(self, x):
        return x

    def _derives_step(self) -> bool:
        return self.lr_outer is None and self.optimizer is None

    def init(self, problem, x0, y0, data, key):
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        # `z` starts at the lower-level solution, `y` there too (`y_λ - z* = O(1/λ)`)
        z0 = _solve_inner(problem, x0, y0, data)
        k_f, k_g = jax.random.split(jax.random.key(0) if key is None else key)
        lip_f = self._smoothness(problem.outer, x0, z0, data.outer, k_f)
        lip_g = self._smoothness(problem.inner, x0, z0, data.inner, k_g)
        penalty = self._user_penalty()
        steps = self._inner_steps()
        if penalty is None or None in steps:
            mu_g = _constants.strong_convexity_y(problem.inner, x0, z0, data.inner)
        if penalty is None:
            penalty = _constants.penalty_scale(
                lip_f, mu_g, dtype, stochastic=self.batch_size is not None
            )
        if None in steps:
            tracking = _constants.tracking_steps(lip_g, mu_g, self.lr_inner)
            steps = [tracking if t is None else jnp.asarray(t) for t in steps]
        lip_h = jnp.ones((), dtype)
        if self._derives_step():
            lip_h = _constants.outer_smoothness(problem, x0, z0, data)
        guard = _Guard(lip_h, x0, jnp.ones((), dtype), jnp.full((), jnp.inf, dtype))
        opt_state = None if self.optimizer is None else self.optimizer.init(x0)
        anchor = (
            _anchor(problem, x0, z0, z0, data) if self._reduces_variance() else None
        )
        return _PenaltyState(
            x0,
            z0,
            z0,
            lip_f,
            lip_g,
            opt_state,
            jnp.array(0),
            anchor,
            jnp.asarray(penalty, dtype),
            *(jnp.asarray(t) for t in steps),
            guard,
        )

    def _smoothness(self, fn, x, y, level_data, key):
        """`ℓ` of `fn(x, ·)` on the whole data, and with minibatches the largest of
        it and of four minibatches' (a batch can be stiffer than the whole)."""
        batches = [level_data]
        if self.batch_size is not None and level_data is not None:
            keys = jax.random.split(key, 4)
            batches += [sample_batch(level_data, k, self.batch_size) for k in keys]
        return jnp.max(
            jnp.stack([smoothness(lambda y_, b=b: fn(x, y_, b), y) for b in batches])
        )

    def iterates(self, state):
        return state.x, state.z

    def _x_update(self, state, d, eta):
        """`x - η d` (or the optax update), with the default step's safeguard."""
        x, guard, opt_state = state.x, state.guard, state.opt_state
        if self.optimizer is not None:
            updates, opt_state = self.optimizer.update(d, opt_state, x)
            return optax.apply_updates(x, updates), opt_state, guard
        if not self._derives_step():
            return _axpy(-eta * self.lr_outer, d, x), opt_state, guard
        norm = tree_norm(d)
        blow_up = norm > 10 * guard.best
        scale = jnp.where(blow_up, guard.scale / 2, guard.scale)
        best = jnp.where(blow_up, norm, jnp.minimum(guard.best, norm))
        x = _axpy(-eta * scale / guard.lip_h, d, x)
        return x, opt_state, _Guard(guard.lip_h, guard.x_ref, scale, best)

    def _refresh(self, problem, state, x, z, data, key):
        """`(ℓ_f, ℓ_g, guard)`: `L_h`, `ℓ_f`, `ℓ_g` re-estimated at `(x, z)` once `x`
        is far from the point of the last estimate (the curvature of both levels
        may change with `x`, e.g. a regularisation strength `exp(x)`)."""
        guard = state.guard
        moved = tree_norm(jtu.tree_map(jnp.subtract, x, guard.x_ref))
        far = moved > 0.5 * (tree_norm(x) + tree_norm(guard.x_ref))
        k_f, k_g = jax.random.split(key)

        def estimate():
            return (
                self._smoothness(problem.outer, x, z, data.outer, k_f),
                self._smoothness(problem.inner, x, z, data.inner, k_g),
                _constants.outer_smoothness(problem, x, z, data),
            )

        old = (state.lip_f, state.lip_g, guard.lip_h)
        lip_f, lip_g, lip_h = jax.lax.cond(far, estimate, lambda: old)
        x_ref = jtu.tree_map(lambda a, b: jnp.where(far, a, b), x, guard.x_ref)
        return lip_f, lip_g, _Guard(lip_h, x_ref, guard.scale, guard.best)

    def step(self, problem, state: _PenaltyState, data: BilevelData, key: Array):
        """One outer step of the value-function penalty method (see module docs)."""
        dtype = jnp.result_type(*jtu.tree_leaves(state.x))
        lam, inner_rate, eta_x = self._schedule(state.k.astype(dtype), state.penalty)
        eta_y = inner_rate / (state.lip_f + lam * state.lip_g)
        eta_z = inner_rate / state.lip_g
        x = state.x
        anchor = state.anchor
        if anchor is not None:
            anchor = jax.lax.cond(
                state.k % self._snapshot_every(data) == 0,
                lambda: _anchor(problem, x, state.y, state.z, data),
                lambda: anchor,
            )
            at_z = (anchor.x, anchor.z, anchor.grad_g_at_z)
            at_y = (anchor.x, anchor.y, anchor.grad_g_at_y)
            at_fy = (anchor.x, anchor.y, anchor.grad_f_at_y)
        else:
            at_z = at_y = at_fy = (None, None, None)
        f, g = problem.outer, problem.inner
        inner = lambda k: sample_batch(data.inner, k, self.batch_size)
        outer = lambda k: sample_batch(data.outer, k, self.batch_size)
        key_g, key_f, key_x = jax.random.split(key, 3)
        # Step `t` of the `z` and of the `y` loop draw the same inner batch: their
        # errors are then correlated and largely cancel in `y - z`, which enters
        # the `x` direction multiplied by `λ`.
        key_t = lambda k, t: jax.random.fold_in(k, t)

        def z_body(t, z):
            d = _estimate(g, 1, x, z, inner(key_t(key_g, t)), *at_z)
            return _axpy(-eta_z, d, z)

        def y_body(t, y):
            d = _axpy(
                lam,
                _estimate(g, 1, x, y, inner(key_t(key_g, t)), *at_y),
                _estimate(f, 1, x, y, outer(key_t(key_f, t)), *at_fy),
            )
            return _axpy(-eta_y, d, y)

        z = jax.lax.fori_loop(0, state.z_steps, z_body, state.z)
        y = jax.lax.fori_loop(0, state.y_steps, y_body, state.y)
        # One inner batch for both `∇_x g` terms: the parts of `∇_x g` that do not
        # depend on the inner variable cancel exactly (their noise is not scaled
        # up by `λ`).
        k1, k2 = jax.random.split(key_x)
        inner_batch = inner(k2)
        d = jtu.tree_map(
            lambda a, b, c: a + lam * (b - c),
            _estimate(f, 0, x, y, outer(k1), *at_fy),
            _estimate(g, 0, x, y, inner_batch, *at_y),
            _estimate(g, 0, x, z, inner_batch, *at_z),
        )
        x, opt_state, guard = self._x_update(state, d, eta_x)
        x = self._project(x)
        lip_f, lip_g = state.lip_f, state.lip_g
        if self._derives_step():
            lip_f, lip_g, guard = self._refresh(problem, state, x, z, data, key_x)
        new = _PenaltyState(
            x,
            y,
            z,
            lip_f,
            lip_g,
            opt_state,
            state.k + 1,
            anchor,
            state.penalty,
            state.y_steps,
            state.z_steps,
            guard,
        )
        return new, StepInfo(tree_norm(d))


_F2SA_EXPONENTS = {
    # noise: (x/y step decay a, z step decay c); λ grows like k^(a-c).
    "both": (5 / 7, 4 / 7),
    "outer": (3 / 5, 2 / 5),
    "none": (1 / 3, 0.0),
}


class F2SA(_AbstractPenaltyAlgorithm):
    r"""F2SA (Kwon, Kwon, Wright, Nowak, ICML 2023): fully first-order stochastic
    bilevel optimisation.

    Outer step `k` (state `x, y, z, λ`):

    1. `inner_steps` times: `z ← z - γ_k ∇_y g(x, z)`,
       `y ← y - α_k (∇_y f(x, y) + λ_k ∇_y g(x, y))`;
    2. `x ← x - β_k [∇_x f(x, y) + λ_k (∇_x g(x, y) - ∇_x g(x, z))]`;

    with fresh minibatches for every gradient, except that the two `∇_x g` share
    one, and step `t` of the `z` and `y` loops share the batch of `∇_y g` (common
    random numbers: the noise of `y - z`, which `λ` multiplies, largely cancels).
    Schedules (`k` from 0):

    - `λ_k = Λ + lambda_growth · k^p` (`Λ = lambda0`),
    - `γ_k = lr_inner (k+1)^(-c) / ℓ_g`,
      `α_k = lr_inner (k+1)^(-c) / (ℓ_f + λ_k ℓ_g)`
      (so `α_k λ_k ≈ γ_k`, and `α_k (ℓ_f + λ_k ℓ_g) < 1`: the `y` update cannot
      diverge as `λ` grows),
    - `β_k = lr_outer (k+1)^(-a)`,

    where `ℓ_f`, `ℓ_g` are the smoothness constants of `f`, `g` in `y`, estimated at
    the start by power iteration. `noise` picks the exponents of the paper: `"both"`
    (stochastic levels) `a, c = 5/7, 4/7`, `"outer"` `3/5, 2/5`, `"none"` `1/3, 0`,
    and `p = a - c`; each can be overridden.

    **Defaults from the problem.** `init` solves the lower level at `x0` (L-BFGS) and
    starts `y = z = z*(x0)` (then `y_λ - z = O(1/λ)`), and estimates at `(x0, z*)`,
    on the whole data (`bilevel/_constants.py`): `ℓ_f`, `ℓ_g` (power iteration),
    `μ_g` (power iteration on `∇²_yy g⁺` by CG) and `L_h`, the largest eigenvalue
    of the Gauss-Newton Hessian `[I; J]ᵀ ∇²f [I; J]` of `h(x) = f(x, y*(x))`,
    `J = -∇²_yy g⁺ ∇²_yx g`. Then:

    - `lambda0 = None`: `Λ = eps^{-1/4} ℓ_f / μ_g` (the bias `O(ℓ_f / (λ μ_g))` of
      `y_λ` is `eps^{1/4}` relative, 1e-4 in float64, 2e-2 in float32; `ℓ_f/μ_g`
      capped at `eps^{-1/4}`; `10 ℓ_f / μ_g` with minibatches, whose noise `λ`
      multiplies); `lambda_growth = None`: `Λ`, so `λ_k = Λ (1 + k^p)`. With
      minibatches, `ℓ_f` and `ℓ_g` are the largest of the whole data's and of four
      sampled minibatches'.
    - `lr_outer = None`: `β_k = s (k+1)^(-a) / L_h`, with `L_h` (and `ℓ_f`, `ℓ_g`
      of the inner steps) re-estimated at `(x, z)` whenever `x` has moved more
      than half of `‖x‖ + ‖x_ref‖` from the last estimate `x_ref`, and a
      safeguard `s` (1 at the start) halved whenever the direction's norm
      exceeds ten times the smallest seen since the last halving (a step too
      long for the curvature makes it grow).
    - `inner_steps = None`: `κ_g / lr_inner` gradient steps (one contraction of
      the tracking error by `1/e`, `κ_g = ℓ_g / μ_g`), clipped to `[10, 1000]`.
    - `noise = None`: `"none"` without minibatches, `"both"` with them.

    **Arguments:**

    - `lr_outer` (default: `1/L_h`, safeguarded), `lr_inner` (fraction of `1/ℓ`,
      default 0.5), `inner_steps` (default: from `κ_g`).
    - `lambda0` (default: `Λ` above), `lambda_growth` (default: `lambda0`).
    - `noise` (default: from `batch_size`), and optional overrides `outer_decay`
      (`a`), `inner_decay` (`c`), `lambda_power` (`p`).
    - `batch_size`: minibatch size of every gradient (`None`: whole data).
    - `optimizer`: optional optax transformation for the `x` update, fed the
      direction above (replaces the `β_k` step; e.g. `optax.adam(0.1)` when the
      scales of `x`'s coordinates differ).
    - `variance_reduction`: `None` or `"svrg"` (see the module docs), with
      `snapshot_every` steps between anchors (default: one pass over the data).
      With it, use `noise="none"` (the noise-free schedules).

    `result.y` is `z`, the estimate of the inner solution `y*(x)`; the penalised
    iterate `y_λ` is in `result.state.y`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.F2SA().run(problem, x0, y0, num_steps=200)
    >>> print(result.x.round(2))  # the solution is x = 0.5
    [0.5 0.5]

    ```
    """

    lr_outer: float | None = None
    lr_inner: float = 0.5
    inner_steps: int | None = None
    lambda0: float | None = None
    lambda_growth: float | None = None
    noise: Literal["both", "outer", "none"] | None = None
    outer_decay: float | None = None
    inner_decay: float | None = None
    lambda_power: float | None = None
    batch_size: int | None = None
    optimizer: optax.GradientTransformation | None = None
    variance_reduction: Literal["svrg"] | None = None
    snapshot_every: int | None = None

    def __check_init__(self):
        if self.noise is not None and self.noise not in _F2SA_EXPONENTS:
            raise ValueError(
                f"`noise` must be one of {sorted(_F2SA_EXPONENTS)}, got {self.noise!r}."
            )

    def _exponents(self):
        noise = self.noise or ("none" if self.batch_size is None else "both")
        a, c = _F2SA_EXPONENTS[noise]
        a = a if self.outer_decay is None else self.outer_decay
        c = c if self.inner_decay is None else self.inner_decay
        p = a - c if self.lambda_power is None else self.lambda_power
        return a, c, p

    def _schedule(self, k, penalty):
        a, c, p = self._exponents()
        growth = penalty if self.lambda_growth is None else self.lambda_growth
        lam = penalty + growth * k**p
        return lam, self.lr_inner * (k + 1) ** (-c), (k + 1) ** (-a)

    def _user_penalty(self):
        return self.lambda0

    def _inner_steps(self):
        return self.inner_steps, self.inner_steps


class PenaltyMethod(_AbstractPenaltyAlgorithm):
    r"""Value-function penalty method with a growing, then fixed, penalty
    (Kwon et al., ICLR 2024; V-PBGD of Shen & Chen, ICML 2023).

    Minimises `ψ_σ(x) = min_y [f(x, y) + γ (g(x, y) - g*(x))]` with `γ = 1/σ`
    ramped linearly from `gamma0` to `gamma_max` over `ramp_steps` outer steps,
    then held (`|ψ_σ - ψ| = O(σ)`). Outer step: `z_steps` gradient steps on `g` for
    `z` (step `lr_inner/ℓ_g`), `y_steps` steps on `f + γ g` for `y` (step
    `lr_inner/(ℓ_f + γ ℓ_g)`), then
    `x ← Proj(x - lr_outer [∇_x f(x, y) + γ (∇_x g(x, y) - ∇_x g(x, z))])`.
    `y_steps=1` is V-PBGD's single joint step on `y`.

    **Defaults from the problem** (as in `F2SA`: `z` and `y` start at the
    lower-level solution at `x0`, constants estimated there):

    - `gamma_max = None`: `eps^{-1/4} ℓ_f / μ_g` (the relative bias of `y_σ` is
      `eps^{1/4}`; `10 ℓ_f / μ_g` with minibatches, whose noise `γ` multiplies);
      `gamma0 = None`: `gamma_max` (no ramp: with `y = z = z*(x0)`
      the direction is bounded from the first step).
    - `lr_outer = None`: `s / L_h`, `L_h` the Gauss-Newton smoothness of
      `h(x) = f(x, y*(x))`, re-estimated when `x` moves far, `s` the halving
      safeguard (see `F2SA`).
    - `y_steps`, `z_steps = None`: `κ_g / lr_inner`, clipped to `[10, 1000]`.

    **Arguments:**

    - `gamma_max`, `gamma0` (defaults above), `ramp_steps` (default 100).
    - `lr_outer` (default `s / L_h`), `lr_inner` (fraction of `1/ℓ`, default 0.5).
    - `y_steps`, `z_steps` (default from `κ_g`).
    - `batch_size`: minibatch size (`None`: whole data).
    - `project`: optional projection of `x` onto a convex set.
    - `optimizer`: optional optax transformation for the `x` update (replaces the
      constant step `lr_outer`).
    - `variance_reduction`: `None` or `"svrg"` (see the module docs), with
      `snapshot_every` steps between anchors (default: one pass over the data).

    Stochastic form: the `x` direction multiplies the noise of `y` and `z` by `γ`,
    so with constant steps the neighbourhood reached grows with `gamma_max`; use
    larger batches, a smaller `lr_inner` or a smaller `gamma_max` than the
    derived one (made for accuracy on the whole data).

    `result.y` is `z`, the estimate of `y*(x)`; `y_σ` is in `result.state.y`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.PenaltyMethod().run(problem, x0, y0, num_steps=200)
    >>> print(result.x.round(2))  # the solution is x = 0.5, up to O(1/gamma_max)
    [0.5 0.5]

    ```
    """

    gamma_max: float | None = None
    gamma0: float | None = None
    ramp_steps: int = 100
    lr_outer: float | None = None
    lr_inner: float = 0.5
    y_steps: int | None = None
    z_steps: int | None = None
    batch_size: int | None = None
    project: Callable | None = None
    optimizer: optax.GradientTransformation | None = None
    variance_reduction: Literal["svrg"] | None = None
    snapshot_every: int | None = None

    def _schedule(self, k, penalty):
        gamma0 = penalty if self.gamma0 is None else self.gamma0
        ramp = jnp.minimum(k / max(self.ramp_steps, 1), 1.0)
        return gamma0 + (penalty - gamma0) * ramp, self.lr_inner, 1.0

    def _user_penalty(self):
        return self.gamma_max

    def _inner_steps(self):
        return self.y_steps, self.z_steps

    def _project(self, x):
        return x if self.project is None else self.project(x)
