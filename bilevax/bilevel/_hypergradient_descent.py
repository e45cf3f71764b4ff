r"""Hypergradient descent (IFT, unrolled or truncated hypergradients) and HOAG.

`HypergradientDescent`: at every outer step, solve the inner problem (warm- or
cold-started), form the hypergradient with the chosen adjoint (Lorraine et al.
2020 for IFT, Shaban et al. 2019 for truncated back-propagation) and take an optax
step on `x`.

`HOAG` (Pedregosa 2016): inner and adjoint solves to a decreasing, summable
tolerance `ε_k = ε_0 · decay^k`, and an outer step `x ← Proj(x - p/L)` whose `L`
adapts by HOAG's sufficient-decrease test (no step size to tune).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import optax
from jaxtyping import Array, PyTree

from ..implicit import ImplicitAdjoint
from ..implicit._iterate import AbstractIterateAdjoint
from ..implicit._linear_solve import CG
from ..implicit._tree import tree_norm
from ..solvers import RESULTS
from ._hypergradient import ConstrainedInner, hypergradient
from ._inner import AbstractInnerSolver, GradientDescent
from ._problem import BilevelData, sample_batch
from ._run import AbstractBilevelAlgorithm, StepInfo


def _batches(data: BilevelData, key, batch_size) -> BilevelData:
    k_in, k_out = jax.random.split(key)
    return BilevelData(
        inner=sample_batch(data.inner, k_in, batch_size),
        outer=sample_batch(data.outer, k_out, batch_size),
    )


def _project(project, x):
    return x if project is None else project(x)


class _HGDState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    y0: PyTree[Array]
    opt_state: PyTree
    adjoint: PyTree[Array]  # the last adjoint vector (zeros before the first)


class HypergradientDescent(AbstractBilevelAlgorithm):
    r"""Outer optax optimizer on hypergradients from any adjoint.

    **Arguments:**

    - `optimizer`: optax transformation of the outer update (default
      `optax.adam(1e-2)`).
    - `inner_solver`: `GradientDescent(...)` (default), `LBFGS(...)`, or
      `ConstrainedInner(...)` for a lower level with constraints.
    - `adjoint`: `ImplicitAdjoint(linear_solver)` (default, CG), `UnrolledAdjoint()`
      or `TruncatedAdjoint(K)`.
    - `warm_start`: start each inner solve from the previous inner solution and
      each implicit adjoint solve from the previous adjoint vector (True), or from
      `y0` and zero (False). With many inner solutions the two give different
      hypergradients.
    - `batch_size`: `None` (deterministic, whole data) or the minibatch size of both
      levels (stochastic hypergradients).
    - `tol`: inner/adjoint tolerance of the implicit adjoint (see `hypergradient`).
    - `project`: optional projection of `x` onto a convex set after each step.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> solver = bx.bilevel.HypergradientDescent(optax.sgd(0.5))
    >>> result = solver.run(problem, x0, y0, num_steps=50)
    >>> print(result.x.round(4), result.result == bx.bilevel.RESULTS.successful)
    [0.5 0.5] True

    ```
    """

    optimizer: optax.GradientTransformation = optax.adam(1e-2)
    inner_solver: AbstractInnerSolver | ConstrainedInner = GradientDescent()  # noqa: RUF009
    adjoint: AbstractIterateAdjoint = ImplicitAdjoint()  # noqa: RUF009
    warm_start: bool = True
    batch_size: int | None = None
    tol: float | None = None
    project: Callable | None = None

    def init(self, problem, x0, y0, data, key):
        zeros = jtu.tree_map(jnp.zeros_like, y0)
        return _HGDState(x0, y0, y0, self.optimizer.init(x0), zeros)

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state, data, key):
        batch = _batches(data, key, self.batch_size)
        start = state.y if self.warm_start else state.y0
        _, grad, y, stats = hypergradient(
            problem,
            state.x,
            start,
            self.inner_solver,
            self.adjoint,
            batch,
            tol=self.tol,
            adjoint_y0=state.adjoint if self.warm_start else None,
            throw=False,
        )
        updates, opt_state = self.optimizer.update(grad, state.opt_state, state.x)
        x = _project(self.project, optax.apply_updates(state.x, updates))
        converged = stats.inner_result == RESULTS.successful
        info = StepInfo(tree_norm(grad), stats.inner_failed, converged)
        adjoint = state.adjoint if stats.adjoint is None else stats.adjoint
        return _HGDState(x, y, state.y0, opt_state, adjoint), info


class _HOAGState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    lipschitz: Array
    eps: Array
    inner_scale: Array
    prev_x: PyTree[Array]
    prev_value: Array
    prev_eps: Array
    prev_grad: PyTree[Array]
    delta: Array
    adjoint: PyTree[Array]  # the last adjoint vector (zeros before the first)


class HOAG(AbstractBilevelAlgorithm):
    r"""HOAG (Pedregosa, ICML 2016): hypergradient descent with approximate
    gradients whose tolerances decrease summably, and an adaptive step `1/L`.

    At outer step `k`: solve the inner problem (warm start) to
    `‖∇_y g‖ <= ε_k ‖∇_y g(x_0, y_0)‖`, the adjoint system by CG to relative
    residual `ε_k`, form `p_k`, then test the previous step:

    - if `F_k <= F_{k-1} + s_k - LΔ²/2`, with the slack for inexactness
      `s_k = C ε_k + ε_{k-1}(C+1)Δ` (`Δ = ‖p_{k-1}‖/L`, `C = 0.25`): accept it and
      set `L ← 0.95 L`;
    - else if `F_k > F_{k-1} + s_k`: reject it (restore `x_{k-1}`), `L ← 2L`,
      `ε_k ← ε_k / 2`;
    - otherwise accept it, with `L ← 2L`;

    then step `x ← Proj(x - p/L)`. `L` starts at `‖p_0‖/√dim(x)` (or 1 when
    `‖p_0‖ <= 1e-3`). Deterministic (whole data).

    This departs from HOAG's code in three places, all to make the rule a proper
    backtracking: the decrease required is `LΔ²/2` (the descent lemma's; HOAG asks
    for `LΔ²`, which exact gradient steps cannot meet); any increase beyond the
    slack is rejected (HOAG rejects only `F_k >= 1.2 F_{k-1}` and so lets `F` creep
    up when `L` has shrunk too far); and a step without sufficient decrease doubles
    `L` even when it is accepted (HOAG keeps `L`, and a step that jumps across the
    minimum to a point of equal value is then repeated back and forth forever).

    **Arguments:**

    - `inner_solver`: `GradientDescent(...)` (default) or `LBFGS(...)`.
    - `eps0`, `decay`, `eps_min`: the tolerance schedule
      `ε_k = max(eps0 · decay^k, eps_min)` (defaults 1e-3, 0.9 as HOAG; `eps_min`
      defaults to 1e-12 in float64, as HOAG, and 1e-6 in float32).
    - `linear_steps`: CG iteration cap.
    - `project`: optional projection of `x` (HOAG clips to a box).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.HOAG().run(problem, x0, y0, num_steps=50)
    >>> print(result.x.round(4), result.result == bx.bilevel.RESULTS.successful)
    [0.5 0.5] True

    ```
    """

    inner_solver: AbstractInnerSolver = GradientDescent()  # noqa: RUF009
    eps0: float = 1e-3
    decay: float = 0.9
    eps_min: float | None = None
    linear_steps: int | None = None
    project: Callable | None = None

    def _eps_min(self, dtype):
        if self.eps_min is not None:
            return self.eps_min
        return 1e-12 if jnp.finfo(dtype).bits == 64 else 1e-6

    def init(self, problem, x0, y0, data, key):
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        scale = tree_norm(jax.grad(problem.inner, argnums=1)(x0, y0, data.inner))
        return _HOAGState(
            x=x0,
            y=y0,
            lipschitz=jnp.array(-1.0, dtype),  # < 0: not yet initialised
            eps=jnp.array(self.eps0, dtype),
            inner_scale=jnp.where(scale > 0, scale, 1.0).astype(dtype),
            prev_x=x0,
            prev_value=jnp.array(jnp.inf, dtype),
            prev_eps=jnp.array(self.eps0, dtype),
            prev_grad=jtu.tree_map(jnp.zeros_like, x0),
            delta=jnp.zeros((), dtype),
            adjoint=jtu.tree_map(jnp.zeros_like, y0),
        )

    def iterates(self, state):
        return state.x, state.y

    def step(self, problem, state, data, key):
        # Inner tolerance relative to the first inner gradient's norm, adjoint CG to
        # relative residual ε_k; `state.y` is the inner solution at `prev_x`.
        adjoint = ImplicitAdjoint(CG(rtol=state.eps, max_steps=self.linear_steps))
        value, grad, y, stats = hypergradient(
            problem,
            state.x,
            state.y,
            self.inner_solver,
            adjoint,
            data,
            tol=state.eps * state.inner_scale,
            adjoint_y0=state.adjoint,  # HOAG's warm start of the adjoint solve
            throw=False,
        )
        first = state.lipschitz < 0
        norm = tree_norm(grad)
        dim = sum(a.size for a in jtu.tree_leaves(state.x))
        lip0 = jnp.where(norm > 1e-3, norm / jnp.sqrt(dim), 1.0)
        c = 0.25
        L, eps, delta = state.lipschitz, state.eps, state.delta
        slack = c * eps + state.prev_eps * (c + 1) * delta
        decrease = value <= state.prev_value + slack - 0.5 * L * delta**2
        reject = ~first & (value > state.prev_value + slack)
        L = jnp.where(first, lip0, jnp.where(decrease, 0.95 * L, 2 * L))
        pick = lambda a, b: jtu.tree_map(lambda u, v: jnp.where(reject, u, v), a, b)
        x = pick(state.prev_x, state.x)
        y = pick(state.y, y)
        grad = pick(state.prev_grad, grad)
        value = jnp.where(reject, state.prev_value, value)
        eps_next = jnp.where(reject, eps / 2, eps)
        step = jtu.tree_map(lambda g: g / L, grad)
        new_x = _project(self.project, jtu.tree_map(jnp.subtract, x, step))
        new_state = _HOAGState(
            x=new_x,
            y=y,
            lipschitz=L,
            eps=jnp.maximum(eps_next * self.decay, self._eps_min(eps.dtype)).astype(
                eps.dtype
            ),
            inner_scale=state.inner_scale,
            prev_x=x,
            prev_value=value,
            prev_eps=eps_next,
            prev_grad=grad,
            delta=tree_norm(step),
            adjoint=state.adjoint if stats.adjoint is None else stats.adjoint,
        )
        converged = stats.inner_result == RESULTS.successful
        return new_state, StepInfo(tree_norm(grad), stats.inner_failed, converged)
