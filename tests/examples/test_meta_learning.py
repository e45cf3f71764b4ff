"""The meta-learning example: iMAML's implicit meta-gradient is exact on a task
whose inner problem is quadratic; MAML, first-order MAML and iMAML all meta-learn,
and iMAML's memory does not grow with the number of inner steps."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._load import load_example
from ._run import run_example


def test_imaml_meta_gradient_is_exact_on_a_quadratic_task():
    ml = load_example("meta_learning")
    params, static = eqx.partition(
        eqx.nn.Linear(1, 1, key=jax.random.key(0)), eqx.is_array
    )
    learner = ml.Learner(static, "imaml", inner_steps=3000, inner_lr=0.05, prox=0.5)
    x, y = ml.sample_tasks(jax.random.key(1), 1, 20)
    x, y = x[0], y[0]
    shots = 10

    def exact(theta):  # the proximal problem of a linear model in closed form
        A = jnp.concatenate([x[:shots], jnp.ones((shots, 1))], axis=1)
        t = jnp.concatenate([theta.weight.ravel(), theta.bias])
        H = 2 * A.T @ A / shots + learner.prox * jnp.eye(2)
        phi = jnp.linalg.solve(H, 2 * A.T @ y[:shots, 0] / shots + learner.prox * t)
        phi = eqx.tree_at(lambda m: (m.weight, m.bias), theta, (phi[:1, None], phi[1:]))
        return learner.loss(phi, x[shots:], y[shots:])

    implicit = jax.grad(learner.task_loss)(params, x, y, shots)
    reference = jax.grad(exact)(params)
    for a, b in zip(
        jax.tree_util.tree_leaves(implicit),
        jax.tree_util.tree_leaves(reference),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_imaml_meta_gradient_is_grad_of_vmap_and_equals_per_task_average():
    ml = load_example("meta_learning")
    params, static = eqx.partition(
        eqx.nn.MLP(1, 1, 8, 1, key=jax.random.key(0)), eqx.is_array
    )
    # CG run to convergence (25 unknowns): when it stops unconverged at
    # `max_steps`, the batched adjoint solve need not match the per-task ones
    learner = ml.Learner(
        static, "imaml", inner_steps=20, inner_lr=0.05, prox=1.0, cg_steps=100
    )
    xs, ys = ml.sample_tasks(jax.random.key(1), 3, 8)
    shots = 4
    loss, grad = jax.jit(learner.meta_gradient, static_argnums=3)(params, xs, ys, shots)
    per_task = jax.vmap(jax.value_and_grad(learner.task_loss), (None, 0, 0, None))
    losses, grads = per_task(params, xs, ys, shots)
    np.testing.assert_allclose(loss, losses.mean(), rtol=1e-12)
    leaves = jax.tree_util.tree_leaves(grad)
    assert any(np.abs(g).max() > 1e-3 for g in leaves)
    for a, b in zip(leaves, jax.tree_util.tree_leaves(grads), strict=True):
        np.testing.assert_allclose(a, b.mean(0), rtol=1e-6, atol=1e-10)


def test_meta_learning_example(tmp_path):
    stdout = run_example(
        "meta_learning.py",
        "--meta-steps",
        "300",
        "--seeds",
        "1",
        "--out",
        str(tmp_path),
    )
    initial = float(re.search(r"([\d.]+) after \d+ steps", stdout).group(1))
    for name in ("MAML", "first-order MAML", "iMAML"):
        error = float(
            re.search(rf"^{re.escape(name)}\s+([\d.]+)", stdout, re.M).group(1)
        )
        assert error < 0.75 * initial, (name, error, initial)
    memory = lambda name: [
        float(v)
        for v in re.search(
            rf"^\s+{re.escape(name)}\s+T=5:\s+([\d.]+) MiB\s+T=50:\s+([\d.]+)",
            stdout,
            re.M,
        ).groups()
    ]
    few, many = memory("iMAML")
    assert many == few
    few, many = memory("MAML")
    assert many > 2 * few
    assert (tmp_path / "meta_learning.png").stat().st_size > 10_000
