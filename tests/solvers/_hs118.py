"""Hock-Schittkowski problem 118 (a 15-variable QP with 17 linear inequalities and
bounds), which sif2jax 0.0.8 does not have; written from the book (Hock &
Schittkowski 1981), optimal value 664.82045."""

import jax.numpy as jnp

import bilevax as bx

OPTIMAL_VALUE = 664.82045
Y0 = jnp.array([20, 55, 15, 20, 60, 20, 20, 60, 20, 20, 60, 20, 20, 60, 20.0])
LOWER = jnp.array([8, 43, 3] + [0] * 12, dtype=float)
UPPER = jnp.array([21, 57, 16] + [90, 120, 60] * 4, dtype=float)


def _objective(y, args):
    Y = y.reshape(5, 3)
    linear = jnp.array([2.3, 1.7, 2.2])
    quadratic = jnp.array([1e-4, 1e-4, 1.5e-4])
    return jnp.sum(Y @ linear + Y**2 @ quadratic)


def _ineq(y, args):
    """`<= 0` form of `Σ_k y_{3j+k} >= (60, 50, 70, 85, 100)_j` and the ramping
    limits `-7 <= y_{3j+k} - y_{3(j-1)+k} <= (6, 7, 6)_k`."""
    Y = y.reshape(5, 3)
    demand = jnp.array([60.0, 50, 70, 85, 100]) - Y.sum(axis=1)
    ramp = Y[1:] - Y[:-1]
    return jnp.concatenate(
        [demand, (-7 - ramp).ravel(), (ramp - jnp.array([6.0, 7, 6])).ravel()]
    )


PROBLEM = bx.solvers.ConstrainedProblem(_objective, ineq=_ineq, bounds=(LOWER, UPPER))
