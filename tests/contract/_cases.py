"""Small random well-posed problems, one or more per public differentiable entry
point (fixed seeds; sizes of a few entries so that finite differences are cheap)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

import bilevax as bx
from bilevax.implicit import (
    ImplicitAdjoint,
    TruncatedAdjoint,
    UnrolledAdjoint,
    conditions,
    custom_fixed_point,
    custom_root,
    iterate,
    root_jvp,
    root_vjp,
)

from ._check import Case


def _normal(seed, shape, dtype):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


def _ridge_objective(w, lam, X, y):
    return 0.5 * jnp.mean((X @ w - y) ** 2) + 0.5 * jnp.exp(lam) * jnp.sum(w**2)


def _ridge_args(dtype):
    return (
        jnp.asarray(-1.0, dtype),
        _normal(0, (5, 3), dtype),
        _normal(1, (5,), dtype),
    )


@custom_root(conditions.stationarity(_ridge_objective))
def _ridge(init, lam, X, y):
    n = X.shape[0]
    return jnp.linalg.solve(
        X.T @ X / n + jnp.exp(lam) * jnp.eye(3, dtype=X.dtype), X.T @ y / n
    )


def _pytree_objective(w, p):
    a, b = w["a"], w["b"]
    return (
        0.5 * jnp.sum((a - p["t"]) ** 2)
        + 0.5 * jnp.exp(p["s"]) * jnp.sum(b**2)
        + 0.25 * jnp.sum(a[:2] * b) ** 2
        - jnp.sum(b) * p["s"]
    )


@custom_root(
    conditions.stationarity(_pytree_objective), lx.GMRES(rtol=1e-12, atol=1e-12)
)
def _pytree_root(init, p):
    solver = bx.bilevel.LBFGS(200)
    g = lambda p_, w: _pytree_objective(w, p_)
    w, _ = solver.solve(g, init, p, 1e-13 if p["s"].dtype == jnp.float64 else 1e-6)
    return w


def _pytree_args(dtype):
    p = {"t": _normal(2, (3,), dtype), "s": jnp.asarray(0.3, dtype)}
    return (p,)


def _T(y, a, B):
    return 0.5 * jnp.tanh(B @ y) + a


@custom_fixed_point(_T)
def _fixed_point(init, a, B):
    return jax.lax.fori_loop(0, 80, lambda _, y: _T(y, a, B), init)


def _fp_args(dtype):
    return (_normal(3, (3,), dtype), 0.5 * _normal(4, (3, 3), dtype))


_F = conditions.stationarity(
    lambda y, a: 0.5 * jnp.sum(y**2 * jnp.exp(a)) - jnp.sum(a * y)
)
_y_of = lambda a: a * jnp.exp(-a)  # the root of _F


def _root_vjp(a, u):
    return root_vjp(_F, _y_of(a), (a,), u)[0][0]


def _root_jvp(a, t):
    return root_jvp(_F, _y_of(a), (a,), (t,))[0]


def _vec2(dtype):
    return (_normal(5, (3,), dtype) * 0.5, _normal(6, (3,), dtype))


def _iterate_fn(adjoint, batches=True):
    def step(w, theta, t, batch):
        return w - 0.3 * (w * jnp.exp(theta) - batch) - 0.05 * jnp.tanh(w)

    def fn(y0, theta, data):
        return iterate(step, y0, theta, 6, adjoint=adjoint, batches=data)

    return fn


def _iterate_args(dtype):
    return (
        _normal(7, (3,), dtype),
        0.2 * _normal(8, (3,), dtype),
        _normal(9, (6, 3), dtype),
    )


def _implicit_iterate(y0, theta):
    step = lambda w, theta, t: w - 0.5 * (w * jnp.exp(theta) - 1.0 + 0.1 * jnp.tanh(w))
    return iterate(step, y0, theta, 200, adjoint=ImplicitAdjoint())


def _minimize_fn(solver, tol64=None):
    """`a -> y(a)`; `tol64` (the solver's `tol` in float64) makes the solution
    accurate enough for finite differences of the solution map."""
    problem = bx.solvers.ConstrainedProblem(
        objective=lambda y, a: 0.5 * jnp.sum((y - a) ** 2) + 0.1 * jnp.sum(y**4),
        eq=lambda y, a: jnp.array([jnp.sum(y) - 1.0]),
    )
    accurate = solver if tol64 is None else eqx.tree_at(lambda s: s.tol, solver, tol64)

    def fn(a):
        chosen = accurate if a.dtype == jnp.float64 else solver
        return bx.solvers.minimize(problem, jnp.zeros(3, a.dtype), a, chosen).y

    return fn


def _projection(c):
    return bx.solvers.project_polyhedron(
        c, ineq=lambda v: jnp.array([jnp.sum(v) - 1.0])
    ).y


def _kernel_args(dtype):
    return (_normal(10, (3, 2), dtype), _normal(11, (2, 2), dtype))


def _support_args(dtype):  # a support set: 3 inputs, 3 targets of 2 outputs
    return (_normal(10, (3, 2), dtype), _normal(11, (3, 2), dtype))


def _kernel_ridge_fit(X_s, Y_s):
    return bx.bilevel.KernelRidge(bx.bilevel.kernels.RBF(), 1e-2).fit(X_s, Y_s)


def _kernel_ridge_predict(X_s, Y_s):
    model = bx.bilevel.KernelRidge(bx.bilevel.kernels.NTK(), 1e-2)
    return model.predict(X_s, model.fit(X_s, Y_s), X_s[:2] + 0.1)


CASES = {
    "custom_root-ridge": Case(
        "implicit.custom_root", lambda lam, X, y: _ridge(None, lam, X, y), _ridge_args
    ),
    "custom_root-pytree": Case(
        "implicit.custom_root",
        lambda p: _pytree_root(
            {"a": jnp.zeros(3, p["s"].dtype), "b": jnp.zeros(2, p["s"].dtype)}, p
        ),
        _pytree_args,
        rtol=1e-5,
        fd_eps=1e-4,  # the L-BFGS solve leaves ~1e-11 of noise in the loss
    ),
    "custom_fixed_point": Case(
        "implicit.custom_fixed_point",
        lambda a, B: _fixed_point(jnp.zeros_like(a), a, B),
        _fp_args,
    ),
    "root_vjp": Case("implicit.root_vjp", _root_vjp, _vec2),
    "root_jvp": Case("implicit.root_jvp", _root_jvp, _vec2),
    "iterate-unrolled": Case(
        "implicit.iterate", _iterate_fn(UnrolledAdjoint()), _iterate_args, forward=False
    ),
    "iterate-unrolled-all": Case(
        "implicit.UnrolledAdjoint", _iterate_fn(UnrolledAdjoint("all")), _iterate_args
    ),
    "iterate-truncated-K>=T": Case(
        "implicit.TruncatedAdjoint",
        _iterate_fn(TruncatedAdjoint(6, checkpoints="all")),
        _iterate_args,
    ),
    "iterate-truncated-K<T": Case(
        "implicit.TruncatedAdjoint",
        _iterate_fn(TruncatedAdjoint(3, checkpoints="all")),
        _iterate_args,
        fd=False,  # a biased derivative by design: self-agreement only
    ),
    "iterate-implicit": Case(
        "implicit.ImplicitAdjoint",
        _implicit_iterate,
        lambda d: _vec2(d)[:1] * 2,
        rtol=1e-5,
    ),
    "minimize-sketched-newton": Case(
        "solvers.minimize",
        _minimize_fn(bx.solvers.SketchedNewton(), tol64=1e-10),
        lambda d: _vec2(d)[:1],
        rtol=1e-5,
    ),
    "minimize-augmented-lagrangian": Case(
        "solvers.AugmentedLagrangian",
        _minimize_fn(bx.solvers.AugmentedLagrangian()),
        lambda d: _vec2(d)[:1],
        rtol=1e-4,
    ),
    "project_polyhedron": Case(
        "solvers.project_polyhedron", _projection, lambda d: (jnp.array([2.0, 1.0], d),)
    ),
    "kernels-rbf": Case("bilevel.kernels.RBF", bx.bilevel.kernels.RBF(), _kernel_args),
    "kernels-nngp": Case(
        "bilevel.kernels.NNGP", bx.bilevel.kernels.NNGP(), _kernel_args
    ),
    "kernels-ntk": Case("bilevel.kernels.NTK", bx.bilevel.kernels.NTK(), _kernel_args),
    "kernel-ridge-fit": Case("bilevel.KernelRidge", _kernel_ridge_fit, _support_args),
    "kernel-ridge-predict": Case(
        "bilevel.KernelRidge", _kernel_ridge_predict, _support_args
    ),
}
