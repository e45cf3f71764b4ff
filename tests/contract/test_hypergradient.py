"""The contract of `bilevel.hypergradient` with every adjoint and inner solver: the
returned hypergradient is the derivative of the returned outer loss (central finite
differences of it), equals the closed form where the adjoint is exact, and is the
same under `jit` and `vmap` over `x`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevax as bx
from bilevax.implicit import ImplicitAdjoint, TruncatedAdjoint, UnrolledAdjoint

_H = jnp.array([[2.0, 0.5, 0.0], [0.5, 1.5, 0.2], [0.0, 0.2, 1.0]])
_B = jnp.array([[1.0, -0.5], [0.3, 0.8], [-0.2, 0.4]])
_T = jnp.array([0.5, -1.0, 2.0])


def _problem(constrained):
    inner = lambda x, y, b: 0.5 * y @ _H @ y - y @ (_B @ x)
    outer = lambda x, y, b: 0.5 * jnp.sum((y - _T) ** 2) + 0.05 * jnp.sum(x**2)
    if not constrained:
        return bx.bilevel.BilevelProblem(outer=outer, inner=inner)
    # y_0 <= 10 is inactive near x: the same derivative as the unconstrained one
    return bx.bilevel.BilevelProblem(
        outer=outer, inner=inner, inner_constraints=lambda x, y: y[:1] - 10.0
    )


def _exact(x):
    y = jnp.linalg.solve(_H, _B @ x)
    return _B.T @ jnp.linalg.solve(_H, y - _T) + 0.1 * x


_COMBOS = {
    "gd-implicit": (bx.bilevel.GradientDescent(2000), ImplicitAdjoint(), True),
    "lbfgs-implicit": (bx.bilevel.LBFGS(200), ImplicitAdjoint(), True),
    "gd-unrolled": (
        bx.bilevel.GradientDescent(30, stepsize=0.3),
        UnrolledAdjoint(),
        False,
    ),
    "gd-truncated-K>=T": (
        bx.bilevel.GradientDescent(30, stepsize=0.3),
        TruncatedAdjoint(30),
        False,
    ),
    "gd-truncated-K<T": (
        bx.bilevel.GradientDescent(30, stepsize=0.3),
        TruncatedAdjoint(10),
        None,  # biased: neither exact nor the derivative of the returned value
    ),
    "constrained-kkt": (bx.bilevel.ConstrainedInner(), ImplicitAdjoint(), True),
}


@pytest.mark.parametrize(
    "combo",
    ["gd-implicit"]
    + [pytest.param(c, marks=pytest.mark.slow) for c in list(_COMBOS)[1:]],
)
def test_hypergradient_contract(combo):
    inner, adjoint, exact = _COMBOS[combo]
    problem = _problem(combo.startswith("constrained"))
    y0 = jnp.zeros(3)
    run = jax.jit(
        lambda x: bx.bilevel.hypergradient(problem, x, y0, inner, adjoint)[:2]
    )
    x = jnp.array([0.7, -0.3])
    value, grad = run(x)
    eager = bx.bilevel.hypergradient(problem, x, y0, inner, adjoint)[1]
    assert jnp.allclose(eager, grad, rtol=1e-9, atol=1e-12)
    if exact is not None:  # the returned grad is d(value)/dx
        fd = np.zeros(2)
        for k in range(2):
            e = jnp.zeros(2).at[k].set(1e-6)
            fd[k] = (float(run(x + e)[0]) - float(run(x - e)[0])) / 2e-6
        assert jnp.allclose(grad, fd, rtol=1e-5, atol=1e-8)
    if exact:
        assert jnp.allclose(grad, _exact(x), rtol=1e-6)
    xs = jnp.stack([x, 2 * x, -x])
    batched = jax.jit(jax.vmap(lambda x: run(x)[1]))(xs)
    assert jnp.allclose(batched, jnp.stack([run(x)[1] for x in xs]), rtol=1e-8)
