r"""Implicit differentiation of a solver through its optimality condition.

If `y*(θ)` solves `F(y, θ) = 0` and `∂F/∂y` is invertible there, the implicit
function theorem gives

$$\frac{\partial y^*}{\partial θ} = -\Big(\frac{\partial F}{\partial y}\Big)^{-1}
\frac{\partial F}{\partial θ}.$$

The derivative is defined here by a JVP rule (forward mode): one matrix-free linear
solve with `A = ∂F/∂y` per tangent. That solve is a `jax.lax.custom_linear_solve`,
so JAX obtains reverse mode by transposing it into a solve with `Aᵀ`, and batches
it by broadcasting whatever of `A` and `b` is not batched (a parameter shared
across a `vmap`); `jax.hessian` and other higher derivatives work because the
primal inside the rule is itself implicit.
"""

import functools as ft
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
from jaxtyping import Array, PyTree

from .._display import fields_repr, status_name, summarize
from ._linear_solve import (
    _relative_residual,
    default_linear_solver,
    raise_if_failed,
    wrap_solver,
)
from ._signature import bind_call, traceable_solver
from ._tree import same_shapes, tree_all_finite
from .conditions import fixed_point


class ImplicitStats(eqx.Module):
    """Diagnostics of the linear solve behind an implicit derivative.

    **Attributes:**

    - `num_steps`: iterations of the linear solver (0 for direct solvers).
    - `residual`: relative residual `‖A v - b‖₂ / ‖b‖₂` of the returned solution.
    - `result`: a `lineax.RESULTS` status; `result == lineax.RESULTS.successful`
      when the solve converged to the requested tolerance and is finite.
    - `solution`: the solution `v` of the linear solve (for `root_vjp` the adjoint
      vector), to warm-start the next solve of a slowly changing system through
      `options={"y0": stats.solution}`. Not shown in the repr.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> from bilevax.implicit import root_vjp, conditions
    >>> f = lambda y, a: 0.5 * jnp.sum((y - a) ** 2) + 0.5 * jnp.sum(y**2)
    >>> F = conditions.stationarity(f)
    >>> _, stats = root_vjp(F, jnp.ones(3), (2 * jnp.ones(3),), jnp.ones(3))
    >>> stats
    ImplicitStats(num_steps=1, residual=0, result=successful)

    ```
    """

    num_steps: Array
    residual: Array
    result: lx.RESULTS
    solution: PyTree[Array] = None

    def __repr__(self):
        return fields_repr(
            "ImplicitStats",
            {
                "num_steps": summarize(self.num_steps),
                "residual": summarize(self.residual),
                "result": status_name(self.result),
            },
        )


def _is_none(x):
    return x is None


def _describe(struct) -> str:
    return str(jtu.tree_map(lambda s: f"{s.dtype}{list(s.shape)}", struct)).replace(
        "'", ""
    )


def _check_floating(tree, name: str) -> None:
    """Raise a `TypeError` naming `name` unless every leaf of `tree` is a float."""
    for leaf in jtu.tree_leaves(tree):
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"`{name}` must be a pytree of floating-point arrays; got "
                f"{_describe(jax.eval_shape(lambda: tree))}."
            )


def _check_solution_struct(y_struct, where: str) -> None:
    leaves = jtu.tree_leaves(y_struct)
    if not leaves:
        raise ValueError(f"{where} returned a solution with no arrays in it.")
    for leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise TypeError(
                f"{where} returned a solution with a leaf of dtype {leaf.dtype}; "
                "implicit differentiation needs floating-point solutions. "
                f"Solution structure: {_describe(y_struct)}."
            )


def _check_condition_struct(out_struct, y_struct) -> None:
    if not same_shapes(out_struct, y_struct):
        raise ValueError(
            "The optimality function must return a pytree with the same structure "
            "and shapes as the solution `y`, since `F(y, θ) = 0` is a square system "
            "in `y`.\n"
            f"  solution y:                 {_describe(y_struct)}\n"
            f"  optimality_fn(y, *params):  {_describe(out_struct)}"
        )


def _check_solver_output(y_struct, init, name: str) -> None:
    """The solver must return a solution shaped like its initial guess (when the
    guess is an array pytree: `init=None` guesses are not compared)."""
    leaves = jtu.tree_leaves(init)
    if not leaves or not all(eqx.is_array_like(leaf) for leaf in leaves):
        return
    init_struct = jax.eval_shape(lambda: init)
    same = same_shapes(y_struct, init_struct) and all(
        a.dtype == b.dtype or not jnp.issubdtype(b.dtype, jnp.inexact)
        for a, b in zip(
            jtu.tree_leaves(y_struct), jtu.tree_leaves(init_struct), strict=True
        )
    )
    if not same:
        raise ValueError(
            f"The `solver` `{name}` returned a solution whose structure, shapes or "
            "dtypes differ from its initial guess `init`; a root or fixed point has "
            "the structure of `init`.\n"
            f"  expected (init):   {_describe(init_struct)}\n"
            f"  actual (returned): {_describe(y_struct)}"
        )


def _condition_at(optimality_fn, y_struct, args, kwargs, name: str):
    """The closure-converted condition, checked on the solver's solution: a
    condition that cannot take it names the `solver`'s output structure."""
    try:
        condition_cc = eqx.filter_closure_convert(
            optimality_fn, y_struct, *args, **kwargs
        )
        out_struct = eqx.filter_eval_shape(condition_cc, y_struct, *args, **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"The optimality condition failed on the solution returned by the "
            f"`solver` `{name}`: check that the solver returns the structure and "
            "shapes the condition expects for `y`.\n"
            f"  actual (returned by solver): {_describe(y_struct)}\n"
            f"{type(e).__name__}: {e}"
        ) from e
    _check_condition_struct(out_struct, y_struct)
    return condition_cc


def _resolve_solver(optimality_fn, tags, linear_solver, y_struct, **wrap_kwargs):
    if tags is None:
        tags = getattr(optimality_fn, "tags", frozenset())
    tags = frozenset(tags)
    if linear_solver is None:
        leaves = jtu.tree_leaves(y_struct)
        size = sum(math.prod(s.shape) for s in leaves)
        linear_solver = default_linear_solver(tags, leaves[0].dtype, size)
    return tags, wrap_solver(linear_solver, **wrap_kwargs)


def _apply(fn, y, args, kwargs):
    return fn(y, *args, **kwargs)


def _jacobian_operator(fn, y, args, kwargs, tags) -> lx.AbstractLinearOperator:
    """`∂F/∂y` at `y` as a matrix-free operator, built once so that each product
    costs one linear pass.

    A symmetric Jacobian (a Hessian) equals its transpose, so its products are taken
    as VJPs (reverse-over-reverse for a gradient), which on CPU are a little cheaper
    than the linearised JVP used for the general case.
    """
    y_struct = jax.eval_shape(lambda: y)
    if lx.symmetric_tag in tags:
        _, vjp_fn = jax.vjp(lambda y_: _apply(fn, y_, args, kwargs), y)
        return lx.FunctionLinearOperator(lambda v: vjp_fn(v)[0], y_struct, tags=tags)

    def fn_y(y_, closure):
        fn_, args_, kwargs_ = closure
        return _apply(fn_, y_, args_, kwargs_)

    operator = lx.JacobianLinearOperator(fn_y, y, (fn, args, kwargs), tags=tags)
    return lx.linearise(operator)


_TRANSPOSED_TAGS = {
    lx.lower_triangular_tag: lx.upper_triangular_tag,
    lx.upper_triangular_tag: lx.lower_triangular_tag,
}


@eqx.filter_jit  # compiled even when called eagerly, so that a failure raises as
def _checked_solve(linear_solver, operator, vector, throw: bool):  # a RuntimeError
    state = linear_solver.init(operator, {})
    x, result, stats = linear_solver.compute(state, vector, {})
    if throw:
        # the wrapped solver reports it unless told not to (`residual=False`)
        residual = stats.get("residual")
        if residual is None:
            residual = _relative_residual(operator, x, vector)
        where = "`custom_root` (implicit derivative)"
        x = raise_if_failed(x, result, residual, linear_solver, where, None)
    return x


def _all_linear(tree):
    """`tree` unchanged in value, with every leaf linear in the tangents.

    JAX's transpose of `custom_linear_solve` requires every leaf of the right-hand
    side to be linear (it asserts so); a leaf that `∂F/∂θ` does not reach (e.g. the
    multipliers' block of KKT conditions for a tangent of the objective only) is a
    constant zero. Adding `0·Σ b`, linear as soon as one leaf is, to every leaf
    makes them all linear.
    """
    zero = 0 * sum(jnp.sum(leaf) for leaf in jtu.tree_leaves(tree))
    return jtu.tree_map(lambda leaf: leaf + zero.astype(leaf.dtype), tree)


def _custom_linear_solve(operator, vector, tags, solve, has_aux: bool = False):
    """`A⁻¹ b` as `jax.lax.custom_linear_solve`, with `solve(op, b, transposed)`
    solving on the lineax operator `op` built from the matvec JAX passes in.

    Its rules, not lineax's, transpose the solve (reverse mode: a solve with `Aᵀ`)
    and batch it: under `vmap` with `A` batched and `b` not (or one leaf of `b`
    not), `b` is broadcast, which lineax's transposed `linear_solve` does not do.
    """
    struct = operator.in_structure()

    def solve_with(tags_, transposed: bool):
        def solve_(matvec, b):
            op = lx.FunctionLinearOperator(matvec, struct, tags_)
            return solve(op, b, transposed)

        return solve_

    symmetric = lx.symmetric_tag in tags
    transposed_tags = frozenset(_TRANSPOSED_TAGS.get(tag, tag) for tag in tags)
    out = jax.lax.custom_linear_solve(
        operator.mv,
        _all_linear(vector),
        solve_with(tags, False),
        None if symmetric else solve_with(transposed_tags, True),
        symmetric=symmetric,
        has_aux=has_aux,
    )
    # The same mixing on the way out: the cotangent JAX hands the transposed solve
    # then has every leaf linear in the others, so that under second order (the
    # JVP of a backward pass, e.g. `jax.hessian`) no leaf of its right-hand side
    # is a symbolic zero, which JAX's JVP rule of `custom_linear_solve` cannot
    # bind (a leaf the loss does not reach, e.g. the multipliers' block).
    if has_aux:
        return _all_linear(out[0]), out[1]
    return _all_linear(out)


def _linear_solve(operator, vector, tags, linear_solver, throw: bool):
    """`A⁻¹ b` for the JVP rule (`_custom_linear_solve`, by the same
    `linear_solver` forward and transposed). The status is checked inside each
    solve, forward or transposed, and raises when `throw`."""
    return _custom_linear_solve(
        operator,
        vector,
        tags,
        lambda op, b, _: _checked_solve(linear_solver, op, b, throw),
    )


def _reporting_solve(operator, vector, linear_solver, options) -> lx.Solution:
    """`lineax.linear_solve` (status and stats kept) as `_custom_linear_solve`.

    `root_vjp`/`root_jvp` are themselves differentiated (second order, `grad` of
    `vmap` with a shared parameter), so JAX's rules rather than lineax's transpose
    and batch the solve; the status and stats are its aux.
    """

    def solve(op, b, transposed: bool):
        options_ = None if transposed else options
        sol = lx.linear_solve(op, b, linear_solver, options=options_, throw=False)
        return sol.value, (sol.result, sol.stats)

    value, (result, stats) = _custom_linear_solve(
        operator, vector, operator.tags, solve, has_aux=True
    )
    return lx.Solution(value=value, result=result, stats=stats, state=None)


def _scalars_to_arrays(tree):
    """Python floats become (weakly typed) arrays, so that they are dynamic inputs.

    This includes the float literals JAX passes as primals under
    `jax.grad(f)(0.5)`; without it they would be mistaken for static values.
    """
    return jtu.tree_map(
        lambda x: jnp.asarray(x) if isinstance(x, (float, complex)) else x, tree
    )


def _cast_like(tree, like):
    return jtu.tree_map(lambda a, b: jnp.asarray(a, jnp.asarray(b).dtype), tree, like)


# ---------------------------------------------------------------------------------
# The custom JVP rule.
#
# `inputs = (solver, condition, init, args, kwargs)`, where `solver` and `condition`
# are closure-converted (closed-over arrays become explicit inputs, so that they are
# differentiated too). Only `condition`, `args` and `kwargs` carry derivative
# information: `y*` does not depend on `init` or on the solver's internals.
# ---------------------------------------------------------------------------------


def _solve_primal(inputs, has_aux: bool, throw: bool):
    solver, _, init, args, kwargs = _scalars_to_arrays(inputs)
    out = solver(init, *args, **kwargs)
    y, aux = out if has_aux else (out, None)
    y = jtu.tree_map(jnp.asarray, y)
    if throw:
        y = eqx.error_if(
            y,
            jnp.logical_not(tree_all_finite(y)),
            "The solver wrapped by `custom_root` returned a non-finite (NaN or inf) "
            "solution.",
        )
    return y, aux


@eqx.filter_custom_jvp
def _implicit(inputs, *, tags, linear_solver, has_aux, throw):
    del tags, linear_solver
    return _solve_primal(inputs, has_aux, throw)


@_implicit.def_jvp
def _implicit_jvp(primals, tangents, *, tags, linear_solver, has_aux, throw):
    (inputs,) = primals
    (t_inputs,) = tangents
    inputs = _scalars_to_arrays(inputs)
    y, aux = _implicit(
        inputs, tags=tags, linear_solver=linear_solver, has_aux=has_aux, throw=throw
    )
    _, condition, _, args, kwargs = inputs
    _, t_condition, _, t_args, t_kwargs = t_inputs
    differentiable = (condition, args, kwargs)
    t_differentiable = (t_condition, t_args, t_kwargs)
    t_aux = jtu.tree_map(lambda _: None, aux)  # aux is not differentiated
    if all(t is None for t in jtu.tree_leaves(t_differentiable, is_leaf=_is_none)):
        return (y, aux), (None, t_aux)
    no_tangent = jtu.tree_map(_is_none, t_differentiable, is_leaf=_is_none)
    nondiff, diff = eqx.partition(differentiable, no_tangent, is_leaf=_is_none)

    def condition_at_y(diff_):
        condition_, args_, kwargs_ = eqx.combine(diff_, nondiff)
        return _apply(condition_, y, args_, kwargs_)

    _, rhs = jax.jvp(condition_at_y, (diff,), (t_differentiable,))
    operator = _jacobian_operator(condition, y, args, kwargs, tags)
    solution = _linear_solve(operator, _cast_like(rhs, y), tags, linear_solver, throw)
    t_y = jtu.tree_map(jnp.negative, solution)
    return (y, aux), (t_y, t_aux)


def custom_root(
    optimality_fn: Callable[..., PyTree],
    linear_solver: lx.AbstractLinearSolver | None = None,
    *,
    tags: frozenset[Any] | None = None,
    has_aux: bool = False,
    throw: bool = True,
    result_shape: PyTree[Any] | None = None,
):
    r"""Decorator that differentiates a solver implicitly through `F(y, *params) = 0`.

    The decorated `solver(init, *params, **kwargs) -> y*` can be anything (an
    optimistix/optax loop, a closed form, a call to a non-differentiable library):
    its internals are never differentiated. Derivatives of `y*` with respect to
    `params`, `kwargs` and any arrays `optimality_fn` closes over come from

    $$\partial y^* = -(\partial_y F)^{-1}\, \partial_{θ} F\;\partial θ,$$

    evaluated at the returned solution, with one matrix-free linear solve per
    tangent (forward mode) or cotangent (reverse mode). `jax.grad`, `jax.jvp`,
    `jax.jacfwd`, `jax.jacrev`, `jax.hessian`, `jax.vmap` and `jax.jit` all work,
    in any composition: `jax.grad` of a mean over a `jax.vmap` of solves with
    parameters shared across the batch (iMAML's meta-gradient) included.
    Python floats among the parameters are treated as (differentiable) arrays;
    other non-array parameters (ints, strings, functions) are static.

    A call is bound to the solver's signature, defaults included (as jaxopt's
    `custom_root` does): parameters that can be passed by position reach the solver
    and `optimality_fn` by position, in the solver's order, whether the caller named
    them or not; keyword-only parameters are passed by keyword. So keywords may be
    named like `optimality_fn`'s own arguments (`y=targets`), and the initial guess
    may have another name or a default (`init_params=None`).

    A solver that JAX cannot trace (it calls SciPy or NumPy on its inputs) is
    detected when tracing it raises a tracer-conversion error, and is then called
    on concrete values through `jax.pure_callback`; its derivatives still come from
    `optimality_fn`, which must be JAX code. All the transformations above work on
    it (under `vmap` the solver is called once per batch element, and it runs on
    the host); only its output shape must be known, from `result_shape` or else
    from `init`.

    **Arguments:**

    - `optimality_fn`: `F(y, *params, **kwargs)`, returning a pytree with the
      structure and shapes of `y`. See `bilevax.implicit.conditions` for ready ones.
    - `linear_solver`: a lineax solver for systems in `∂F/∂y` (e.g.
      `bilevax.implicit.CG(rtol)`, `lineax.GMRES(...)`, `lineax.LU()` on the
      materialised Jacobian, `bilevax.implicit.Neumann(steps)`). Default
      (`default_linear_solver`): `bilevax.implicit.CG` if the Jacobian is tagged
      symmetric positive semidefinite (as for `conditions.stationarity`), GMRES
      otherwise, with tolerance 1e-10 (float64) or 1e-5 (float32).
    - `tags`: lineax tags of `∂F/∂y`; defaults to `optimality_fn.tags` if present.
    - `has_aux`: the solver returns `(y, aux)`; `aux` is passed through and not
      differentiated.
    - `throw`: raise a runtime error when the solution is not finite or the linear
      solve fails (does not converge, diverges, breaks down, or returns NaN).
      With `throw=False` failures are not raised; use `root_vjp`/`root_jvp` to get
      the status and residual.
    - `result_shape`: for a solver JAX cannot trace only: a pytree of
      `jax.ShapeDtypeStruct` (or arrays) like what the solver returns (the pair
      `(y, aux)` with `has_aux`). Default: the shape of `init`.

    **Returns:** a function with the solver's signature.

    **Raises:** `TypeError` for a call that does not fit the solver's signature, or
    a non-traceable solver whose output shape is unknown; `ValueError` when
    `optimality_fn` does not return a pytree like the solution.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import custom_root, conditions
    >>> X = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> b = jnp.array([1.0, 2.0, 3.0])
    >>> f = lambda w, lam: 0.5 * jnp.sum((X @ w - b) ** 2) + 0.5 * lam * w @ w
    >>> @custom_root(conditions.stationarity(f))
    ... def ridge(init, lam):
    ...     return jnp.linalg.solve(X.T @ X + lam * jnp.eye(2), X.T @ b)
    >>> round(float(jax.grad(lambda lam: jnp.sum(ridge(None, lam)))(1.0)), 4)
    -0.4118

    ```
    """
    if not callable(optimality_fn):
        raise TypeError(f"`optimality_fn` must be callable, got {optimality_fn!r}.")

    def decorator(solver: Callable[..., Any]):
        name = getattr(solver, "__name__", repr(solver))

        @ft.wraps(solver)
        def solve(*call_args, **call_kwargs):
            init, args, kwargs = bind_call(solver, call_args, call_kwargs, name)
            args, kwargs = _scalars_to_arrays((args, kwargs))
            solver_cc, y_struct = traceable_solver(
                solver, init, args, kwargs, result_shape, name
            )
            if has_aux:
                if not (isinstance(y_struct, tuple) and len(y_struct) == 2):
                    raise ValueError(
                        f"`{name}` was declared with `has_aux=True` and must return "
                        "a pair `(solution, aux)`."
                    )
                y_struct = y_struct[0]
            _check_solution_struct(y_struct, f"`{name}`")
            _check_solver_output(y_struct, init, name)
            condition_cc = _condition_at(optimality_fn, y_struct, args, kwargs, name)
            tags_, linear_solver_ = _resolve_solver(
                optimality_fn,
                tags,
                linear_solver,
                y_struct,
                residual=False,
            )
            inputs = (solver_cc, condition_cc, init, args, kwargs)
            y, aux = _implicit(
                inputs,
                tags=tags_,
                linear_solver=linear_solver_,
                has_aux=has_aux,
                throw=throw,
            )
            return (y, aux) if has_aux else y

        return solve

    return decorator


def custom_fixed_point(
    fixed_point_fn: Callable[..., PyTree],
    linear_solver: lx.AbstractLinearSolver | None = None,
    *,
    has_aux: bool = False,
    throw: bool = True,
    result_shape: PyTree[Any] | None = None,
):
    r"""Decorator that differentiates a solver through `y* = T(y*, *params)`.

    Equivalent to `custom_root` with `F(y, *p) = T(y, *p) - y`; the adjoint system is
    `(I - ∂_y T) v = b`. The default linear solver is GMRES; `Neumann(steps)`
    (the series `Σ (∂_y T)^j`) is natural when `T` is a contraction.

    **Arguments:** `fixed_point_fn` is `T(y, *params, **kwargs)`; the others are as in
    `custom_root`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp
    >>> from bilevax.implicit import custom_fixed_point
    >>> T = lambda y, a: 0.5 * y + a                  # fixed point y* = 2a
    >>> @custom_fixed_point(T)
    ... def solve(init, a):
    ...     return jax.lax.fori_loop(0, 100, lambda _, y: T(y, a), init)
    >>> round(float(jax.grad(lambda a: solve(jnp.zeros(()), a))(1.0)), 6)
    2.0

    ```
    """
    return custom_root(
        fixed_point(fixed_point_fn),
        linear_solver,
        has_aux=has_aux,
        throw=throw,
        result_shape=result_shape,
    )


def _prepare(optimality_fn, solution, params, tags, linear_solver):
    params = tuple(params)
    solution = jtu.tree_map(jnp.asarray, solution)
    y_struct = jax.eval_shape(lambda: solution)
    _check_solution_struct(y_struct, "`solution`")
    out_struct = jax.eval_shape(optimality_fn, solution, *params)
    _check_condition_struct(out_struct, y_struct)
    tags, linear_solver = _resolve_solver(
        optimality_fn, tags, linear_solver, y_struct, residual=True
    )
    operator = _jacobian_operator(optimality_fn, solution, params, {}, tags)
    return solution, params, operator, linear_solver


def _check_like(tree, like, name: str):
    if not same_shapes(tree, like):
        raise ValueError(
            f"`{name}` must have the structure and shapes of its primal; got "
            f"{_describe(jax.eval_shape(lambda: tree))}, expected "
            f"{_describe(jax.eval_shape(lambda: like))}."
        )


def _stats(solution: lx.Solution) -> ImplicitStats:
    return ImplicitStats(
        num_steps=solution.stats["num_steps"],
        residual=solution.stats["residual"],
        result=solution.result,
        solution=solution.value,
    )


def _maybe_throw(value, solution: lx.Solution, throw: bool, linear_solver, where):
    if not throw:
        return value
    residual = solution.stats["residual"]
    return raise_if_failed(
        value, solution.result, residual, linear_solver, where, "stats.result"
    )


def root_vjp(
    optimality_fn: Callable[..., PyTree],
    solution: PyTree[Array],
    params: tuple[Any, ...],
    cotangent: PyTree[Array],
    *,
    linear_solver: lx.AbstractLinearSolver | None = None,
    tags: frozenset[Any] | None = None,
    options: dict[str, Any] | None = None,
    throw: bool = True,
) -> tuple[tuple[Any, ...], ImplicitStats]:
    r"""Vector-Jacobian product of an implicit solution, with solve diagnostics.

    For `y*(θ)` defined by `F(y*, θ) = 0` returns `(∂y*/∂θ)ᵀ u`, computed as
    `-(∂_θ F)ᵀ v` with `(∂_y F)ᵀ v = u`. This is the reverse-mode building block of
    hypergradients: with `u = ∇_y L(y*)` it gives `dL/dθ` minus the direct term.

    **Arguments:**

    - `optimality_fn`: `F(y, *params)`.
    - `solution`: `y*`, a pytree.
    - `params`: the tuple `θ = (p1, p2, ...)` passed to `F` after `y`.
    - `cotangent`: `u`, a pytree with the structure of `y*`.
    - `linear_solver`, `tags`: as in `custom_root`.
    - `options`: lineax options of the adjoint solve (`(∂_y F)ᵀ v = u`), e.g.
      `{"y0": previous_stats.solution}` to warm-start `CG` from the previous
      adjoint vector, or `{"preconditioner": M}` with `M ≈ (∂_y F)⁻ᵀ`.
    - `throw`: raise if the adjoint solve fails; otherwise inspect `stats.result`.

    **Returns:** `(cotangents of params, ImplicitStats)`; the first is a tuple with
    one entry per parameter.

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> import lineax as lx
    >>> from bilevax.implicit import root_vjp, conditions
    >>> f = lambda y, a: 0.5 * jnp.sum((y - a) ** 2) + 0.5 * jnp.sum(y**2)  # y* = a/2
    >>> F = conditions.stationarity(f)
    >>> a, y = 2 * jnp.ones(3), jnp.ones(3)
    >>> (vjp_a,), stats = root_vjp(F, y, (a,), cotangent=jnp.ones(3))
    >>> print(vjp_a, stats.result == lx.RESULTS.successful)
    [0.5 0.5 0.5] True

    ```
    """
    solution, params, operator, linear_solver = _prepare(
        optimality_fn, solution, params, tags, linear_solver
    )
    _check_like(cotangent, solution, "cotangent")
    sol = _reporting_solve(
        operator.transpose(), _cast_like(cotangent, solution), linear_solver, options
    )
    _, vjp_fn = jax.vjp(lambda p: optimality_fn(solution, *p), params)
    (ct_params,) = vjp_fn(jtu.tree_map(jnp.negative, sol.value))
    where = "`root_vjp`"
    return _maybe_throw(ct_params, sol, throw, linear_solver, where), _stats(sol)


def root_jvp(
    optimality_fn: Callable[..., PyTree],
    solution: PyTree[Array],
    params: tuple[Any, ...],
    tangents: tuple[Any, ...],
    *,
    linear_solver: lx.AbstractLinearSolver | None = None,
    tags: frozenset[Any] | None = None,
    options: dict[str, Any] | None = None,
    throw: bool = True,
) -> tuple[PyTree[Array], ImplicitStats]:
    r"""Jacobian-vector product of an implicit solution, with solve diagnostics.

    Returns `(∂y*/∂θ) t = -(∂_y F)^{-1} (∂_θ F) t` and the stats of the solve.

    **Arguments:** as `root_vjp`, with `tangents` a tuple like `params`; `options`
    are those of the solve `(∂_y F) v = (∂_θ F) t` (`v = -tangent`).

    Example:

    ```python
    >>> import jax.numpy as jnp
    >>> from bilevax.implicit import root_jvp, conditions
    >>> f = lambda y, a: 0.5 * jnp.sum((y - a) ** 2) + 0.5 * jnp.sum(y**2)  # y* = a/2
    >>> F = conditions.stationarity(f)
    >>> a, y = 2 * jnp.ones(2), jnp.ones(2)
    >>> tangent, stats = root_jvp(F, y, (a,), (jnp.array([1.0, 0.0]),))
    >>> print(tangent + 0.0)
    [0.5 0. ]

    ```
    """
    solution, params, operator, linear_solver = _prepare(
        optimality_fn, solution, params, tags, linear_solver
    )
    tangents = tuple(tangents)
    _check_like(tangents, params, "tangents")
    _, rhs = jax.jvp(
        lambda p: optimality_fn(solution, *p),
        (params,),
        (_cast_like(tangents, params),),
    )
    sol = _reporting_solve(operator, _cast_like(rhs, solution), linear_solver, options)
    t_y = jtu.tree_map(jnp.negative, sol.value)
    where = "`root_jvp`"
    return _maybe_throw(t_y, sol, throw, linear_solver, where), _stats(sol)
