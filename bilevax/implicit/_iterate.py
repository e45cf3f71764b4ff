r"""Differentiating through a fixed number of steps of an iterative map.

`iterate(step, y0, x, T, adjoint=...)` runs `y_{t+1} = step(y_t, x, t)` for
`t = 0 .. T-1` in one compiled loop and returns `y_T`. The adjoint decides how
`∂y_T/∂x` is obtained in reverse mode:

- `UnrolledAdjoint`: exact back-propagation through all `T` steps, with binomial
  (treeverse) checkpointing so that memory grows like the number of checkpoints,
  not like `T`;
- `TruncatedAdjoint(K)`: back-propagation through the last `K` steps only, the
  state `y_{T-K}` being treated as a constant (Shaban et al. 2019);
- `ImplicitAdjoint`: the implicit function theorem at `y_T`, treated as a fixed
  point of the last step map (or a root of a user-given optimality condition).
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import optax
from jaxtyping import Array, PyTree

from ._implicit import _describe, custom_fixed_point, custom_root
from ._tree import tree_norm

_Step = Callable[..., PyTree]


# ---------------------------------------------------------------------------------
# Cotangent clipping: bounds the norm of the back-propagated cotangent at every step,
# which keeps long unrolls of chaotic inner dynamics from exploding.
# ---------------------------------------------------------------------------------


@jax.custom_vjp
def _clip_cotangent(y, max_norm):
    return y


def _clip_cotangent_fwd(y, max_norm):
    return y, max_norm


def _clip_cotangent_bwd(max_norm, ct):
    norm = tree_norm(ct)
    scale = jnp.minimum(1.0, max_norm / jnp.where(norm > 0, norm, 1.0))
    return jtu.tree_map(lambda c: (c * scale).astype(c.dtype), ct), None


_clip_cotangent.defvjp(_clip_cotangent_fwd, _clip_cotangent_bwd)


def _maybe_clip(y, max_norm):
    if max_norm is None:
        return y
    floats, others = eqx.partition(y, eqx.is_inexact_array)
    return eqx.combine(_clip_cotangent(floats, max_norm), others)


class AbstractIterateAdjoint(eqx.Module):
    """How `iterate` is differentiated in reverse mode.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import iterate, UnrolledAdjoint, TruncatedAdjoint
    >>> step = lambda y, lr, t: y - lr * (y - 2.0)  # gradient descent on ½(y - 2)²
    >>> def grad(adjoint):
    ...     final = lambda lr: iterate(step, 0.0, lr, 5, adjoint=adjoint)
    ...     return round(float(jax.grad(final)(0.1)), 4)
    >>> [grad(a) for a in (UnrolledAdjoint(), TruncatedAdjoint(2))]
    [6.561, 2.6244]

    ```
    """

    @abc.abstractmethod
    def loop(self, body, y0, x, xs, num_steps: int):
        """Run `y, rec = body(y, x, xs_t)` for `num_steps` steps; return
        `(y_T, stacked records)`."""


def _plain_scan(body, y0, x, xs, num_steps):
    return jax.lax.scan(lambda y, xs_t: body(y, x, xs_t), y0, xs, length=num_steps)


def _slice_steps(xs, start, stop):
    return jtu.tree_map(lambda a: a[start:stop], xs)


class UnrolledAdjoint(AbstractIterateAdjoint):
    """Exact reverse mode through every step, with checkpointing.

    **Arguments:**

    - `checkpoints`: how many intermediate states are stored for the backward pass.
      `None` (default): about `√T`, placed by online binomial (treeverse)
      checkpointing, so memory is `O(√T)` states and the forward pass is recomputed
      about once. An `int` sets the number; `"all"` stores every state (plain
      `lax.scan` back-propagation, memory `O(T)`, no recomputation).
    - `max_cotangent_norm`: if set, the cotangent of the state is clipped to this
      Euclidean norm after every step of the backward pass (guards long unrolls of
      unstable dynamics against exploding metagradients; biases the gradient).

    Reverse mode only: `jax.jvp`/`jax.jacfwd` through a checkpointed loop raise an
    error (use `checkpoints="all"` for forward mode). Second order: forward over
    reverse (`jax.hessian`, `jax.jacfwd(jax.grad(...))`) works; reverse over
    reverse (`jax.grad(jax.grad(...))`, `jax.jacrev(jax.jacrev(...))`, or `jax.grad`
    of a function that itself takes a `jax.grad` through the loop, such as the
    `value` returned by `bilevax.bilevel.hypergradient` with this adjoint) does not:
    JAX cannot transpose the `while_loop` that replays the checkpoints, and says
    "Reverse-mode differentiation does not work for lax.while_loop". Use
    `checkpoints="all"` there.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import iterate, UnrolledAdjoint
    >>> step = lambda y, lr, t: y - lr * (y - 2.0)  # y_T = 2 - 2(1 - lr)^T
    >>> final = lambda lr: iterate(step, 0.0, lr, 100, adjoint=UnrolledAdjoint())
    >>> exact = 200 * 0.99**99  # 2T(1 - lr)^(T-1)
    >>> round(float(jax.grad(final)(0.01)), 3), round(exact, 3)
    (73.946, 73.946)

    ```
    """

    checkpoints: int | str | None = None
    max_cotangent_norm: float | None = None

    def __check_init__(self):
        if isinstance(self.checkpoints, str) and self.checkpoints != "all":
            raise ValueError("`checkpoints` must be None, an int or 'all'.")
        if isinstance(self.checkpoints, int) and self.checkpoints < 1:
            raise ValueError("`checkpoints` must be at least 1.")

    def loop(self, body, y0, x, xs, num_steps):
        def clipped(y, x, xs_t):
            y, rec = body(y, x, xs_t)
            return _maybe_clip(y, self.max_cotangent_norm), rec

        if num_steps == 0:
            return _plain_scan(clipped, y0, x, xs, num_steps)
        if self.checkpoints == "all":
            return _plain_scan(clipped, y0, x, xs, num_steps)
        checkpoints = self.checkpoints
        if checkpoints is not None:
            checkpoints = min(checkpoints, num_steps)
        return eqxi.scan(
            lambda y, xs_t: clipped(y, x, xs_t),
            y0,
            xs,
            length=num_steps,
            kind="checkpointed",
            checkpoints=checkpoints,
        )


class TruncatedAdjoint(AbstractIterateAdjoint):
    r"""Reverse mode through the last `K` steps only (K-step truncated
    back-propagation, Shaban, Cheng, Hatch, Boots 2019).

    The first `T - K` steps run without a tape and `y_{T-K}` is treated as a constant,
    so memory is `O(K)` (or less with checkpointing) whatever `T`. For a
    `α`-strongly convex, `β`-smooth inner loss and gradient steps of size `γ ≤ 1/β`,
    the bias against the full hypergradient is at most
    `(1 - γα)^K ‖∇_y f‖ max_t ‖∂²g/∂x∂y‖ / α`: it decays geometrically in `K` and
    does not depend on `T`.

    `K >= T` is exact back-propagation, identical to `UnrolledAdjoint` with respect
    to every input (`y0`, `x`, `batches`). With `K < T` only the last `K` steps are
    differentiated: the derivative with respect to `y0`, and to the batches of the
    first `T - K` steps, is zero (the state `y_{T-K}` is a constant); the
    derivative with respect to `x` counts its use in the last `K` steps only.

    **Arguments:**

    - `K`: number of steps back-propagated through (the paper's default is 100).
    - `checkpoints`, `max_cotangent_norm`: as `UnrolledAdjoint`, for the last `K`
      steps.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import iterate, TruncatedAdjoint
    >>> step = lambda y, lr, t: y - lr * (y - 2.0)
    >>> def grad(k):
    ...     final = lambda lr: iterate(step, 0.0, lr, 100, adjoint=TruncatedAdjoint(k))
    ...     return round(float(jax.grad(final)(0.01)), 3)
    >>> [grad(k) for k in (1, 10, 100)]  # K = T is the full gradient
    [0.739, 7.395, 73.946]

    ```
    """

    K: int
    checkpoints: int | str | None = None
    max_cotangent_norm: float | None = None

    def __check_init__(self):
        if self.K < 0:
            raise ValueError(f"`TruncatedAdjoint(K=...)` must be >= 0, got {self.K}.")

    def loop(self, body, y0, x, xs, num_steps):
        tail = UnrolledAdjoint(self.checkpoints, self.max_cotangent_norm)
        if self.K >= num_steps:  # exact: every input keeps its derivative
            return tail.loop(body, y0, x, xs, num_steps)
        start = num_steps - self.K
        frozen_x = jax.lax.stop_gradient(x)
        y, rec_head = _plain_scan(
            body, jax.lax.stop_gradient(y0), frozen_x, _slice_steps(xs, 0, start), start
        )
        y = jax.lax.stop_gradient(y)
        y, rec_tail = tail.loop(
            body, y, x, _slice_steps(xs, start, num_steps), num_steps - start
        )
        records = jtu.tree_map(lambda a, b: jnp.concatenate([a, b]), rec_head, rec_tail)
        return y, records


class ImplicitAdjoint(AbstractIterateAdjoint):
    r"""Implicit differentiation at the last iterate.

    The loop runs without a tape; `y_T` is then treated as the solution of
    `condition(y, x) = 0` (default: the fixed point `y = step(y, x, T-1, ...)` of the
    last step map) and differentiated by `custom_root`, one linear solve per
    hypergradient, memory `O(1)` in `T`. Exact in the limit of a converged loop
    whose solution is isolated (the Jacobian of the condition is invertible); for
    a loop that stops early, or an inner problem with many solutions, use
    `UnrolledAdjoint`/`TruncatedAdjoint`.

    The derivative with respect to `y0` is zero (an isolated fixed point does not
    depend on where the loop started; it is the `T → ∞` limit of the unrolled
    one). The batch of the last step enters the condition and is differentiated;
    earlier batches get zero.

    **Arguments:**

    - `linear_solver`: lineax solver of the adjoint system (default as in
      `custom_root`: GMRES for the fixed-point condition).
    - `condition`: optional optimality condition `F(y, x)` (e.g.
      `conditions.stationarity(loss)`); it must return a pytree like the state.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import iterate, ImplicitAdjoint, conditions
    >>> g = lambda y, a: 0.5 * (y - a) ** 2 + 0.5 * y**2  # minimiser y* = a/2
    >>> step = lambda y, a, t: y - 0.5 * jax.grad(g)(y, a)
    >>> adjoint = ImplicitAdjoint(condition=conditions.stationarity(g))
    >>> final = lambda a: iterate(step, 0.0, a, 50, adjoint=adjoint)
    >>> round(float(jax.grad(final)(3.0)), 4)
    0.5

    ```
    """

    linear_solver: lx.AbstractLinearSolver | None = None
    condition: Callable[..., PyTree] | None = None

    def loop(self, body, y0, x, xs, num_steps):
        y, records = _plain_scan(
            body, jax.lax.stop_gradient(y0), jax.lax.stop_gradient(x), xs, num_steps
        )
        bad = [
            leaf
            for leaf in jtu.tree_leaves(y)
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
        ]
        if bad:
            raise TypeError(
                "`ImplicitAdjoint` needs a state whose leaves are all floating point "
                f"(got {_describe(jax.eval_shape(lambda: y))}); for optimizer states "
                "with integer counters use `UnrolledAdjoint` or `TruncatedAdjoint`."
            )
        if num_steps == 0:
            return y, records
        last = _slice_steps(xs, num_steps - 1, num_steps)
        last = jtu.tree_map(lambda a: a[0], last)
        if self.condition is None:
            decorate = custom_fixed_point(
                lambda y_, x_: body(y_, x_, last)[0], self.linear_solver
            )
        else:
            decorate = custom_root(self.condition, self.linear_solver)
        y = decorate(lambda init, x_: init)(jax.lax.stop_gradient(y), x)
        return y, records


def iterate(
    step: _Step,
    y0: PyTree[Array],
    x: PyTree[Any],
    num_steps: int,
    *,
    adjoint: AbstractIterateAdjoint = UnrolledAdjoint(),  # noqa: B008 (immutable)
    batches: PyTree[Array] | None = None,
    key: Array | None = None,
    record: Callable[..., PyTree[Array]] | None = None,
):
    r"""Run `y_{t+1} = step(y_t, x, t)` for `num_steps` steps, differentiably in `x`.

    One compiled loop (`lax.scan` or a checkpointed scan), so it runs under `jit` and
    `vmap` (e.g. over hyperparameters) and the state may be any pytree, including an
    optax optimizer state (see `optax_step`).

    **Arguments:**

    - `step`: `step(y, x, t) -> y`, with `t` the step index (an int32 scalar). With
      `batches` it is called `step(y, x, t, batch)`; with `key`,
      `step(y, x, t, batch, key)` (`batch` is `None` without `batches`).
    - `y0`: initial state. Warm start (y0 = the last solution of a previous outer
      step, passed through `jax.lax.stop_gradient`) or cold start (a fixed y0) is the
      caller's choice: when the inner problem has many solutions, the two end at
      different `y_T` and give different hypergradients.
    - `x`: the outer variables (any pytree), differentiated through the loop.
    - `num_steps`: `T`, a Python int.
    - `adjoint`: `UnrolledAdjoint()` (default), `TruncatedAdjoint(K)` or
      `ImplicitAdjoint(...)`.
    - `batches`: optional pytree whose leaves have leading axis `num_steps`; step `t`
      receives `batches[t]`.
    - `key`: optional PRNG key; step `t` receives `jax.random.split(key, T)[t]`.
    - `record`: optional `record(y_{t+1}, x, t) -> pytree` evaluated after every
      step (e.g. the training loss); its stacked values are returned.

    **Returns:** `y_T`, or `(y_T, records)` when `record` is given (records have
    leading axis `num_steps`).

    **Transformations:** every adjoint supports `jit`, `vmap` and reverse mode
    (`jax.grad`, `jax.vjp`, `jax.jacrev`). Forward mode (`jax.jvp`, `jax.jacfwd`):
    `ImplicitAdjoint` (through `custom_root`'s JVP rule) and `UnrolledAdjoint` /
    `TruncatedAdjoint` with `checkpoints="all"` and no `max_cotangent_norm`; the
    checkpointed loop and the clipping are reverse-mode only (`custom_vjp`), and
    forward mode through them raises a `TypeError` that says so.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import iterate, TruncatedAdjoint
    >>> step = lambda y, lam, t: y - 0.1 * (y - 1.0 + lam * y)   # GD on a quadratic
    >>> loss = lambda lam: iterate(step, jnp.zeros(3), lam, 200).sum()
    >>> round(float(jax.grad(loss)(0.5)), 4)    # d/dλ of 3/(1+λ)
    -1.3333
    >>> truncated = lambda lam: iterate(
    ...     step, jnp.zeros(3), lam, 200, adjoint=TruncatedAdjoint(K=100)).sum()
    >>> round(float(jax.grad(truncated)(0.5)), 4)
    -1.3333

    ```
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool):
        raise TypeError(
            f"`num_steps` must be a Python int (static), got {type(num_steps)}."
        )
    if num_steps < 0:
        raise ValueError(f"`num_steps` must be >= 0, got {num_steps}.")
    if not isinstance(adjoint, AbstractIterateAdjoint):
        raise TypeError(
            "`adjoint` must be UnrolledAdjoint, TruncatedAdjoint or ImplicitAdjoint, "
            f"got {adjoint!r}."
        )
    if batches is not None:
        for leaf in jtu.tree_leaves(batches):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != num_steps:
                raise ValueError(
                    "Every leaf of `batches` needs a leading axis of length "
                    f"`num_steps` = {num_steps}; got a leaf of shape "
                    f"{jnp.shape(leaf)}."
                )
    keys = None if key is None else jax.random.split(key, num_steps)
    xs = (jnp.arange(num_steps, dtype=jnp.int32), batches, keys)

    def call_step(y, x, xs_t):
        t, batch, k = xs_t
        extra = () if batches is None and key is None else (batch,)
        extra = extra if key is None else (*extra, k)
        return step(y, x, t, *extra)

    def body(y, x, xs_t):
        y_next = call_step(y, x, xs_t)
        rec = None if record is None else record(y_next, x, xs_t[0])
        return y_next, rec

    if num_steps > 0:
        _check_step_output(call_step, y0, x, jtu.tree_map(lambda a: a[0], xs))
    try:
        y, records = adjoint.loop(body, y0, x, xs, num_steps)
    except TypeError as e:
        if "forward-mode" not in str(e):
            raise
        raise TypeError(
            f"`iterate` with {type(adjoint).__name__} supports reverse mode only "
            "(`jax.grad`, `jax.vjp`, `jax.jacrev`): its checkpointed loop (and "
            "cotangent clipping) is a `custom_vjp`, which JAX cannot differentiate "
            "in forward mode (`jax.jvp`, `jax.jacfwd`). For forward mode use "
            "`UnrolledAdjoint(checkpoints='all')` without `max_cotangent_norm`, or "
            "`ImplicitAdjoint()`; or use reverse mode."
        ) from e
    return y if record is None else (y, records)


def _check_step_output(call_step, y0, x, xs_0):
    in_struct = jax.eval_shape(lambda: y0)
    out_struct = eqx.filter_eval_shape(call_step, y0, x, xs_0)
    same = jtu.tree_structure(in_struct) == jtu.tree_structure(out_struct) and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(
            jtu.tree_leaves(in_struct), jtu.tree_leaves(out_struct), strict=True
        )
    )
    if not same:
        raise ValueError(
            "`step` must return a state with the structure, shapes and dtypes of "
            f"`y0`.\n  y0:          {_describe(in_struct)}\n"
            f"  step(y0, ...): {_describe(out_struct)}"
        )


def optax_step(
    loss: Callable[..., Array], optimizer: optax.GradientTransformation
) -> _Step:
    """A step function for `iterate` that applies an optax optimizer to `loss`.

    The state is the pair `(params, opt_state)`, so Adam's moments (or any
    optimizer's state) are carried through the loop and differentiated:

    ```python
    step = optax_step(loss, optax.adam(1e-2))
    params_T, _ = iterate(step, (params0, optax.adam(1e-2).init(params0)), x, T)
    ```

    **Arguments:**

    - `loss`: `loss(params, x, *extra) -> scalar`, where `extra` is `(batch,)` or
      `(batch, key)` when `iterate` is given `batches`/`key`.
    - `optimizer`: any `optax.GradientTransformation`. Per-step clipping of the
      inner gradients is `optax.chain(optax.clip_by_global_norm(c), optimizer)`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> from bilevax.implicit import iterate, optax_step
    >>> loss = lambda w, target: jnp.sum((w - target) ** 2)
    >>> step = optax_step(loss, optax.adam(0.1))
    >>> y0 = (jnp.zeros(2), optax.adam(0.1).init(jnp.zeros(2)))
    >>> final_loss = lambda t: loss(iterate(step, y0, t, 20)[0], jnp.zeros(2))
    >>> print(jax.grad(final_loss)(jnp.ones(2)).round(3))
    [2.937 2.937]

    ```
    """

    def step(state, x, t, *extra):
        params, opt_state = state
        grads = jax.grad(loss)(params, x, *extra)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step
