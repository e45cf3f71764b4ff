r"""Support-restricted implicit differentiation of proximal-gradient fixed points
(Bertrand, Klopfenstein, Blondel, Vaiter, Gramfort, Salmon, "Implicit
differentiation of Lasso-type models for hyperparameter optimization", ICML 2020).

At a solution `y` of `min_y f(y, *args) + g(y, θ)` the condition
`F(y, θ, args) = prox(y - η ∇f(y), θ, η) - y = 0` has the Jacobian

$$J = ∂_y F = D (I - η H) - I,\qquad D = ∂_v \operatorname{prox}(v),\;
    H = ∇²_y f.$$

`D` is symmetric (a prox is the gradient of a convex function, the Moreau
envelope's conjugate) and, for L1-type penalties, its rows vanish off the support
`S` (where the prox maps to a kink: zero coefficients or groups, active bounds).
With `N` the other coordinates, `J = [[J_SS, J_SN], [0, -I]]`, so
`Jᵀ q = v` splits into

$$J_{SS}^\top q_S = v_S, \qquad q_N = J_{SN}^\top q_S - v_N,$$

with `J_SS = D_SS (I - η H_SS) - I`: an `|S| × |S|` system, for the Lasso
`-J_SS = η H_SS = η X_Sᵀ X_S / n`, far smaller and better conditioned than the
full one. The hypergradient is then `-(∂_{θ,args} F)ᵀ q`.

`S` is found as the nonzero entries of `D r` for a fixed pseudo-random `r`: a row
of `D` that vanishes gives 0, any other a nonzero entry almost surely.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array

from .._display import fields_repr, status_name, summarize


class SupportAdjoint(eqx.Module):
    r"""How to solve the support-restricted adjoint system `J_SSᵀ q_S = v_S` of a
    proximal-gradient fixed point (see `support_vjp`).

    **Arguments:**

    - `max_support`: when the support has at most this many coordinates, the
      `|S| × |S|` matrix is formed (`max_support` Jacobian-vector products, batched)
      and solved by LU; above it, the restricted system is solved matrix-free on
      full-size vectors masked to `S` by `fallback`.
    - `fallback`: a lineax solver for the large-support case; `None` (default)
      means `lineax.GMRES(rtol=tol, atol=tol·‖v‖)` (the restricted matrix is not
      symmetric for the group Lasso).
    - `max_steps`: iteration cap of the default fallback.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> f = lambda y, t: 0.5 * jnp.sum((y - t) ** 2)  # Lasso on identity: y = l1(t)
    >>> t, alpha = jnp.array([3.0, 0.2, -2.0]), 1.0
    >>> y = bx.prox.l1(t, alpha)
    >>> v = jnp.array([1.0, 1.0, -1.0])
    >>> (g_alpha, (g_t,)), stats = bx.implicit.support_vjp(
    ...     f, bx.prox.l1, 1.0, y, alpha, (t,), v, bx.implicit.SupportAdjoint()
    ... )
    >>> print(g_alpha, g_t, stats.num_steps)  # d(y₁ - y₃)/dα = -2; zero off support
    -2.0 [ 1.  0. -1.] 2

    ```
    """

    max_support: int = 64
    fallback: lx.AbstractLinearSolver | None = None
    max_steps: int = 1000


class SupportStats(eqx.Module):
    """Diagnostics of `support_vjp`: `support_size` (`|S|`), `num_steps` (the
    size of the dense system, or the fallback's iterations), `residual` (relative,
    `‖J_SSᵀ q_S - v_S‖ / ‖v_S‖`), `result` (a `lineax.RESULTS`) and `dense` (whether
    the dense path was taken).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import bilevax as bx
    >>> f = lambda y: 0.5 * jnp.sum((y - jnp.array([3.0, 0.2])) ** 2)
    >>> y = jnp.array([2.0, 0.0])
    >>> _, stats = bx.implicit.support_vjp(
    ...     f, bx.prox.l1, 1.0, y, 1.0, (), jnp.ones(2), bx.implicit.SupportAdjoint()
    ... )
    >>> print(stats.support_size, bool(stats.dense))
    1 True

    ```
    """

    support_size: Array
    num_steps: Array
    residual: Array
    result: lx.RESULTS
    dense: Array

    def __repr__(self):
        fields = {
            k: summarize(getattr(self, k))
            for k in ("support_size", "num_steps", "residual")
        }
        fields["result"] = status_name(self.result)
        fields["dense"] = summarize(self.dense)
        return fields_repr("SupportStats", fields)


def _support_mask(prox_jvp, size, dtype):
    r = jax.random.uniform(jax.random.key(0), (size,), dtype, 0.5, 1.5)
    return prox_jvp(r) != 0


def _dense_solve(operator, rhs, mask, k):
    """Form and solve the `k × k` restriction of `operator` to the support."""
    size = mask.shape[0]
    (idx,) = jnp.nonzero(mask, size=k, fill_value=0)
    valid = jnp.arange(k) < jnp.sum(mask)
    basis = jnp.zeros((k, size), rhs.dtype).at[jnp.arange(k), idx].set(valid)
    columns = jax.vmap(operator)(basis)  # row j: A e_{idx_j}
    matrix = columns[:, idx].T
    matrix = jnp.where(valid[:, None] & valid[None, :], matrix, jnp.diag(~valid))
    q_s = jnp.linalg.solve(matrix, jnp.where(valid, rhs[idx], 0.0))
    return jnp.zeros(size, rhs.dtype).at[idx].add(jnp.where(valid, q_s, 0.0))


def _iterative_solve(operator, rhs, config, tol):
    solver = config.fallback
    if solver is None:
        atol = tol * jnp.linalg.norm(rhs)
        solver = lx.GMRES(rtol=tol, atol=atol, max_steps=config.max_steps)
    structure = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
    op = lx.FunctionLinearOperator(operator, structure)
    sol = lx.linear_solve(op, rhs, solver, throw=False)
    return sol.value, sol.stats.get("num_steps", jnp.array(0)), sol.result


def _restricted_operator(prox_jvp, step_jvp, mask):
    """`u ↦ mask·(-Jᵀ)(mask·u) + (1 - mask)·u`, with `-Jᵀ u = u - (I - ηH) D u`."""

    def operator(u):
        masked = jnp.where(mask, u, 0.0)
        image = masked - step_jvp(prox_jvp(masked))
        return jnp.where(mask, image, u)

    return operator


def _gradient_step(objective, stepsize, unravel, y_flat, args):
    """`y - η ∇f(y, *args)` on the flattened `y`."""
    grad = jax.grad(objective)(unravel(y_flat), *args)
    return y_flat - stepsize * ravel_pytree(grad)[0]


def _linearised(objective, prox, stepsize, y_flat, unravel, prox_params, args):
    step = lambda y_: _gradient_step(objective, stepsize, unravel, y_, args)
    v, step_jvp = jax.linearize(step, y_flat)
    prox_flat = lambda v_: ravel_pytree(prox(unravel(v_), prox_params, stepsize))[0]
    _, prox_jvp = jax.linearize(prox_flat, v)
    return step_jvp, prox_jvp


def support_vjp(
    objective,
    prox,
    stepsize,
    y,
    prox_params,
    args: tuple,
    cotangent,
    config: SupportAdjoint = SupportAdjoint(),  # noqa: B008 (immutable)
    tol: float | None = None,
):
    r"""The cotangents `(∂y*/∂θ)ᵀ v`, `(∂y*/∂args)ᵀ v` of the solution `y*` of
    `min_y f(y, *args) + g(y, θ)`, through the proximal-gradient fixed point,
    solving the adjoint system on the support only (module docstring; Bertrand et
    al., ICML 2020).

    **Arguments:**

    - `objective`: the smooth part `f(y, *args) -> scalar`.
    - `prox`: `prox(v, θ, η)` of the penalty (e.g. from `bilevax.prox`); its
      Jacobian must be symmetric, true of every prox.
    - `stepsize`: `η > 0`, best near `1/L`.
    - `y`: the solution (a pytree); `prox_params`: `θ`; `args`: tuple of `f`'s
      other arguments; `cotangent`: `v`, like `y`.
    - `config`: a `SupportAdjoint`; `tol`: relative tolerance of an iterative
      fallback (default `1e-10` in float64, `1e-5` in float32).

    **Returns:** `((ct_θ, ct_args), SupportStats)`. Nothing is raised: check
    `stats.result`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> import bilevax as bx
    >>> f = lambda y: 0.5 * jnp.sum((y - jnp.array([3.0, 0.2])) ** 2)
    >>> y = bx.prox.l1(jnp.array([3.0, 0.2]), 1.0)  # the Lasso solution, [2, 0]
    >>> (g_alpha, _), _ = bx.implicit.support_vjp(
    ...     f, bx.prox.l1, 1.0, y, 1.0, (), jnp.ones(2)
    ... )
    >>> print(g_alpha)
    -1.0

    ```
    """
    y_flat, unravel = ravel_pytree(y)
    v = ravel_pytree(cotangent)[0].astype(y_flat.dtype)
    tol = (1e-10 if y_flat.dtype == jnp.float64 else 1e-5) if tol is None else tol
    step_jvp, prox_jvp = _linearised(
        objective, prox, stepsize, y_flat, unravel, prox_params, args
    )
    mask = _support_mask(prox_jvp, y_flat.size, y_flat.dtype)
    operator = _restricted_operator(prox_jvp, step_jvp, mask)
    rhs = jnp.where(mask, -v, 0.0)
    k = min(config.max_support, y_flat.size)
    count = jnp.sum(mask)
    dense = count <= k
    q_s, steps, result = jax.lax.cond(
        dense,
        lambda: (_dense_solve(operator, rhs, mask, k), count, lx.RESULTS.successful),
        lambda: _iterative_solve(operator, rhs, config, tol),
    )
    residual = jnp.linalg.norm(operator(q_s) - rhs) / jnp.maximum(
        jnp.linalg.norm(rhs), jnp.finfo(rhs.dtype).tiny
    )
    # q_N = J_SNᵀ q_S - v_N = [(I - ηH) D q_S]_N - v_N (q_S is zero off S).
    q = jnp.where(mask, q_s, step_jvp(prox_jvp(q_s)) - v)

    def condition(params):
        theta, args_ = params
        v_ = _gradient_step(objective, stepsize, unravel, y_flat, args_)
        return ravel_pytree(prox(unravel(v_), theta, stepsize))[0] - y_flat

    _, vjp = jax.vjp(condition, (prox_params, tuple(args)))
    (cts,) = vjp(-q)
    result = lx.RESULTS.where(jnp.isfinite(residual), result, lx.RESULTS.breakdown)
    stats = SupportStats(count, jnp.asarray(steps), residual, result, dense)
    return cts, stats
