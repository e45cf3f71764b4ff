r"""MAID (Salehi, Mukherjee, Roberts, Ehrhardt, SIMODS 2025, arXiv:2308.10098):
inexact hypergradient descent whose accuracies adapt to the outer progress, with
a backtracking line search on inexact values."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ..implicit import ImplicitAdjoint
from ..implicit._linear_solve import CG
from ..implicit._tree import tree_axpy, tree_norm
from ._hypergradient import hypergradient
from ._inner import GradientDescent, smoothness
from ._oracles import constants
from ._problem import BilevelData
from ._run import AbstractBilevelAlgorithm, StepInfo


class _MAIDState(eqx.Module):
    x: PyTree[Array]
    y: PyTree[Array]
    eps: Array  # accuracy: inner ‖∇_y g‖ <= eps · scale, adjoint CG rtol eps
    trial: Array  # first trial step of the next line search
    scale: Array  # ‖∇_y g(x0, y0)‖
    lip_g: Array
    mu_g: Array
    lip_f: Array
    failures: Array  # consecutive failed line searches


def maid_constants(problem, x0, y0, data, lr):
    """`(ℓ_g, μ_g, ℓ_f, first trial step lr/ℓ_h)`: the inner solver's step, the
    constants of the value-error bound, and the line search's first step."""
    c = constants(problem, x0, y0, data)
    lip_f = smoothness(lambda y: problem.outer(x0, y, data.outer), y0)
    return c.lip_g, c.mu_g, lip_f, lr / c.lip_h


class MAID(AbstractBilevelAlgorithm):
    r"""MAID, the Method of Adaptive Inexact Descent (Salehi, Mukherjee, Roberts,
    Ehrhardt, "An adaptively inexact first-order method for bilevel optimization
    with application to hyperparameter learning", SIMODS 2025).

    Outer iteration `k` with accuracy `ε` (state):

    1. Solve the lower level at `x` from the previous `ỹ` to `‖∇_y g‖ <= ε s`
       (`s = ‖∇_y g(x₀, y₀)‖`, so `‖ỹ - y*‖ <= e = ε s/μ_g`), the adjoint system by
       CG to relative residual `ε`, and form the inexact hypergradient `p` and
       value `f̃ = f(x, ỹ)`. The value's error is at most
       `ω(x) = ‖∇_y f(x, ỹ)‖ e + ℓ_f e²/2`.
    2. Backtracking: for `α = β, β ρ, β ρ², …` (at most `J = max_backtracks ·
       (1 + consecutive failures)` trials: MAID's code retries; we do not cap
       the retries, so that a first step too long by orders of magnitude, e.g.
       on data of another scale, is still found), solve
       the lower level at `x⁺ = x - α p` (from `ỹ`, same accuracy) and accept the
       first step with the sufficient decrease that still holds for the exact
       values:

           f̃(x⁺) + ω(x⁺) <= f̃(x) - ω(x) - η α ‖p‖².

    3. Accepted: `x ← x⁺`, `β ← α · growth`, `ε ← min(ν ε, eps0)` (loosen slowly,
       `ν > 1`).
       Rejected after all trials: `x` stays, `ε ← τ ε` (tighten, `τ < 1`): the
       next iteration recomputes `p` more accurately and backtracks further.

    HOAG's fixed summable schedule `ε_k` is replaced by this feedback; no step
    size or Lipschitz constant has to be known.

    **Arguments:**

    - `eps0` (default 0.1), `eps_min` (1e-12 in float64, 1e-6 in float32).
    - `eta`: `η` (default 1e-4); `backtrack`: `ρ` (default 0.9);
      `max_backtracks` (default 10); `growth` (default 10/9).
    - `tighten`: `τ` (default 0.5); `loosen`: `ν` (default 1.05).
    - `lr`: first trial step `β₀ = lr/ℓ_h` (default 1), `ℓ_h` estimated at the
      start with `ℓ_g`, `μ_g` and `ℓ_f` (smoothness of `f` in `y`).
    - `inner_steps`: iteration cap of the inner gradient descent (step `1/ℓ_g`).
    - `linear_steps`: CG iteration cap.

    Deterministic (whole data). The recorded norm is `‖p‖`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.MAID().run(problem, x0, y0, num_steps=30)
    >>> print(result.x.round(3))  # the solution is x = 0.5
    [0.5 0.5]

    ```
    """

    eps0: float = 0.1
    eps_min: float | None = None
    eta: float = 1e-4
    backtrack: float = 0.9
    max_backtracks: int = 10
    growth: float = 10 / 9
    tighten: float = 0.5
    loosen: float = 1.05
    lr: float = 1.0
    inner_steps: int = 1000
    linear_steps: int | None = None

    def __check_init__(self):
        if not (0 < self.backtrack < 1 and 0 < self.tighten < 1 and self.loosen >= 1):
            raise ValueError(
                "MAID needs 0 < `backtrack` < 1, 0 < `tighten` < 1 and `loosen` >= 1; "
                f"got {self.backtrack!r}, {self.tighten!r}, {self.loosen!r}."
            )

    def init(self, problem, x0, y0, data: BilevelData, key):
        dtype = jnp.result_type(*jtu.tree_leaves(x0))
        lip_g, mu_g, lip_f, trial = maid_constants(problem, x0, y0, data, self.lr)
        scale = tree_norm(jax.grad(problem.inner, argnums=1)(x0, y0, data.inner))
        cast = lambda a: jnp.asarray(a, dtype)
        return _MAIDState(
            x0,
            y0,
            cast(self.eps0),
            cast(trial),
            cast(jnp.where(scale > 0, scale, 1.0)),
            cast(lip_g),
            cast(mu_g),
            cast(lip_f),
            jnp.array(0),
        )

    def iterates(self, state):
        return state.x, state.y

    def _eps_min(self, dtype):
        if self.eps_min is not None:
            return self.eps_min
        return 1e-12 if jnp.finfo(dtype).bits == 64 else 1e-6

    def _value_error(self, problem, state, x, y, data):
        """`f(x, ỹ)` and the bound `ω` on its error."""
        e = state.eps * state.scale / state.mu_g
        value, grad_y = jax.value_and_grad(problem.outer, argnums=1)(x, y, data.outer)
        return value, tree_norm(grad_y) * e + 0.5 * state.lip_f * e**2

    def step(self, problem, state: _MAIDState, data: BilevelData, key: Array):
        """One MAID iteration (see the class docs)."""
        inner = GradientDescent(self.inner_steps, 1.0 / state.lip_g)
        tol = state.eps * state.scale
        adjoint = ImplicitAdjoint(CG(rtol=state.eps, max_steps=self.linear_steps))
        _, p, y, stats = hypergradient(
            problem, state.x, state.y, inner, adjoint, data, tol=tol, throw=False
        )
        value, omega = self._value_error(problem, state, state.x, y, data)
        norm2 = tree_norm(p) ** 2
        g = lambda x_, y_: problem.inner(x_, y_, data.inner)

        def trial(carry):
            j, _, _, _ = carry
            alpha = state.trial * self.backtrack**j
            x_new = tree_axpy(-alpha, p, state.x)
            y_new, _ = inner.solve(g, y, x_new, tol)
            value_new, omega_new = self._value_error(problem, state, x_new, y_new, data)
            ok = value_new + omega_new <= value - omega - self.eta * alpha * norm2
            return j + 1, ok, x_new, y_new

        j, ok, x_new, y_new = jax.lax.while_loop(
            lambda c: ~c[1] & (c[0] < self.max_backtracks * (1 + state.failures)),
            trial,
            (jnp.array(0), jnp.array(False), state.x, y),
        )
        pick = lambda a, b: jtu.tree_map(lambda u, v: jnp.where(ok, u, v), a, b)
        alpha = state.trial * self.backtrack ** (j - 1)
        eps = jnp.where(ok, self.loosen, self.tighten) * state.eps
        new = eqx.tree_at(
            lambda s: (s.x, s.y, s.eps, s.trial, s.failures),
            state,
            (
                pick(x_new, state.x),
                pick(y_new, y),
                jnp.clip(eps, self._eps_min(eps.dtype), self.eps0).astype(eps.dtype),
                jnp.where(ok, alpha * self.growth, state.trial),
                jnp.where(ok, 0, state.failures + 1),
            ),
        )
        return new, StepInfo(tree_norm(p), stats.inner_failed)
