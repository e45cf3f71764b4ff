"""The per-parameter weight decay example: its hypergradient (one decay per
weight, implicit with CG or a Neumann series) equals finite differences on a tiny
network; the example runs end to end."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bilevax as bx

from ._load import load_example
from ._run import run_example


@pytest.mark.parametrize(
    "linear_solver", [bx.implicit.CG(rtol=1e-12), bx.implicit.Neumann(steps=3000)]
)
def test_per_weight_hypergradient_matches_finite_differences(linear_solver):
    example = load_example("per_parameter_weight_decay")
    k = jax.random.split(jax.random.key(0), 4)
    params, static = eqx.partition(
        eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=k[0]), eqx.is_array
    )
    problem, _ = example.make_problem(static)
    train = (jax.random.normal(k[1], (30, 3)), jnp.arange(30) % 2)
    val = (jax.random.normal(k[2], (20, 3)), jnp.arange(20) % 2)
    log_decay = jax.tree_util.tree_map(
        lambda w: jnp.log(0.05) + 0.5 * jax.random.normal(k[3], w.shape), params
    )
    inner = bx.bilevel.LBFGS(num_steps=2000)
    adjoint = bx.implicit.ImplicitAdjoint(linear_solver)
    _, grad, w, stats = bx.bilevel.hypergradient(
        problem, log_decay, params, inner, adjoint, (train, val), tol=1e-11
    )
    assert float(stats.inner_residual) < 1e-8

    def validation_loss(lam):  # the inner problem solved afresh, to 1e-11
        w_star = inner.solve(
            lambda x, y: problem.inner(x, y, train), w, lam, jnp.asarray(1e-11)
        )[0]
        return problem.outer(lam, w_star, val)

    direction = jax.tree_util.tree_map(
        lambda a: jax.random.normal(jax.random.key(5), a.shape), log_decay
    )
    eps = 1e-3  # the inner solve's error (~1e-9) is then negligible
    shifted = lambda s: jax.tree_util.tree_map(
        lambda a, d: a + s * d, log_decay, direction
    )
    fd = (validation_loss(shifted(eps)) - validation_loss(shifted(-eps))) / (2 * eps)
    directional = bx.implicit._tree.tree_dot(grad, direction)
    np.testing.assert_allclose(directional, fd, rtol=1e-4)


def test_per_parameter_weight_decay_example(tmp_path):
    stdout = run_example(
        "per_parameter_weight_decay.py", "--outer-steps", "20", "--out", str(tmp_path)
    )
    assert "1,126,410 weight-decay hyperparameters" in stdout
    ratio = float(re.search(r"MiB \(([\d.]+)x\)", stdout).group(1))
    assert ratio < 3
    assert (tmp_path / "per_parameter_weight_decay_digits.png").stat().st_size > 10_000
