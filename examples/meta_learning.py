"""Few-shot sinusoid regression (Finn et al. 2017): MAML, first-order MAML and
implicit MAML (Rajeswaran et al. 2019), each vmapped over a batch of tasks.

A task is `y = A sin(x - φ)` with `A ~ U[0.1, 5]`, `φ ~ U[0, π]`, `x ~ U[-5, 5]`;
`K` support points adapt the model, query points score it. The model is an MLP
1-40-40-1. Meta-parameters `θ` are learned so that adapting from them works:

- MAML: adapted `φ_T(θ)` = `T` gradient steps from `θ`, differentiated through the
  steps (`bx.implicit.iterate` with `UnrolledAdjoint`, memory grows with `T`);
- first-order MAML: the same steps, the query gradient at `φ_T` used as is;
- iMAML: `φ*(θ) = argmin_φ L_support(φ) + λ/2 ‖φ - θ‖²` (λ = 0.2), solved by
  `--imaml-steps` gradient steps (rate 0.02), differentiated implicitly
  (`bx.implicit.custom_root`, 10 CG steps on `(H + λI) v = ∇L_query`): memory does
  not depend on the number of steps.

Prints the meta-test error (query MSE after adaptation on unseen tasks) against an
unadapted model, the compiled memory of one meta-gradient for two values of `T`,
and saves a plot of meta-test error against meta-iterations.

Run: python examples/meta_learning.py [--meta-steps 2000] [--inner-steps 5]
     [--imaml-steps 25]
"""

import argparse
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import bilevax as bx


def sample_tasks(key, num_tasks, num_points):
    """`(x, y)` of shape `(num_tasks, num_points, 1)`: support then query points."""
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amplitude = jax.random.uniform(k_amp, (num_tasks, 1, 1), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(k_phase, (num_tasks, 1, 1), maxval=jnp.pi)
    x = jax.random.uniform(k_x, (num_tasks, num_points, 1), minval=-5.0, maxval=5.0)
    return x, amplitude * jnp.sin(x - phase)


class Learner(eqx.Module):
    """Meta-learner: how to adapt `θ` to a task's support set, and the meta-gradient
    of the query loss after adaptation."""

    static: eqx.Module
    method: str
    inner_steps: int
    inner_lr: float = 0.01
    prox: float = 0.2  # iMAML's λ
    cg_steps: int = 10

    def loss(self, params, x, y):
        pred = jax.vmap(eqx.combine(params, self.static))(x)
        return jnp.mean((pred - y) ** 2)

    def adapt(self, theta, x_s, y_s):
        """Task parameters from `θ` (differentiable in `θ` as the method says)."""
        if self.method == "imaml":
            return self._proximal_solve(theta, x_s, y_s)

        # steps on the displacement δ = φ - θ, so that θ is the differentiated input
        def step(delta, theta, t):
            grad = jax.grad(self.loss)(_add(theta, delta), x_s, y_s)
            return jax.tree_util.tree_map(
                lambda d, g: d - self.inner_lr * g, delta, grad
            )

        zeros = jax.tree_util.tree_map(jnp.zeros_like, theta)
        delta = bx.implicit.iterate(step, zeros, theta, self.inner_steps)
        if self.method == "fomaml":
            delta = jax.lax.stop_gradient(delta)
        return _add(theta, delta)

    def _proximal_objective(self, phi, theta, x_s, y_s):
        diff = jax.tree_util.tree_map(jnp.subtract, phi, theta)
        sq = sum(jnp.sum(d**2) for d in jax.tree_util.tree_leaves(diff))
        return self.loss(phi, x_s, y_s) + 0.5 * self.prox * sq

    def _proximal_solve(self, theta, x_s, y_s):
        objective = lambda phi, theta, x_s, y_s: self._proximal_objective(
            phi, theta, x_s, y_s
        )

        @bx.implicit.custom_root(
            bx.implicit.conditions.stationarity(objective),
            bx.implicit.CG(rtol=1e-6, max_steps=self.cg_steps),
            throw=False,
        )
        def solve(init, theta, x_s, y_s):  # never differentiated: plain steps
            grad = jax.grad(objective)
            body = lambda _, phi: jax.tree_util.tree_map(
                lambda p, g: p - self.inner_lr * g, phi, grad(phi, theta, x_s, y_s)
            )
            return jax.lax.fori_loop(0, self.inner_steps, body, init)

        return solve(theta, theta, x_s, y_s)

    def task_loss(self, theta, x, y, shots):
        phi = self.adapt(theta, x[:shots], y[:shots])
        return self.loss(phi, x[shots:], y[shots:])

    def meta_gradient(self, theta, xs, ys, shots):
        """Mean query loss over a task batch and its gradient in `θ`: `jax.grad` of
        the mean over a `jax.vmap` of tasks (shared `θ`, batched tasks)."""

        def mean_loss(theta):
            losses = jax.vmap(self.task_loss, in_axes=(None, 0, 0, None))(
                theta, xs, ys, shots
            )
            return jnp.mean(losses)

        return jax.value_and_grad(mean_loss)(theta)


def _add(a, b):
    return jax.tree_util.tree_map(jnp.add, a, b)


def meta_train(learner, theta, key, args, evaluate):
    optimizer = optax.adam(args.meta_lr)

    @jax.jit
    def chunk(theta, opt_state, key):
        def step(carry, key):
            theta, opt_state = carry
            xs, ys = sample_tasks(key, args.task_batch, 2 * args.shots)
            loss, grad = learner.meta_gradient(theta, xs, ys, args.shots)
            updates, opt_state = optimizer.update(grad, opt_state, theta)
            return (optax.apply_updates(theta, updates), opt_state), loss

        keys = jax.random.split(key, args.meta_steps // 10)
        (theta, opt_state), _ = jax.lax.scan(step, (theta, opt_state), keys)
        return theta, opt_state

    opt_state = optimizer.init(theta)
    curve = [(0, evaluate(learner, theta))]
    start = time.perf_counter()
    for i, k in enumerate(jax.random.split(key, 10)):
        theta, opt_state = jax.block_until_ready(chunk(theta, opt_state, k))
        curve.append(((i + 1) * (args.meta_steps // 10), evaluate(learner, theta)))
    return theta, curve, time.perf_counter() - start


def meta_gradient_memory(learner, theta, args, inner_steps):
    """Compiled memory (temporaries + outputs, bytes) of one meta-gradient."""
    learner = eqx.tree_at(lambda m: m.inner_steps, learner, inner_steps)
    xs, ys = sample_tasks(jax.random.key(0), args.task_batch, 2 * args.shots)
    compiled = (
        jax.jit(learner.meta_gradient, static_argnums=3)
        .lower(theta, xs, ys, args.shots)
        .compile()
    )
    memory = compiled.memory_analysis()
    return memory.temp_size_in_bytes + memory.output_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-steps", type=int, default=2000)
    parser.add_argument("--inner-steps", type=int, default=5, help="MAML, FOMAML")
    parser.add_argument(
        "--imaml-steps", type=int, default=25, help="iMAML (inner rate 0.02, λ 0.2)"
    )
    parser.add_argument("--task-batch", type=int, default=25)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args()

    key = jax.random.key(args.seed)
    init_key, train_key, test_key = jax.random.split(key, 3)
    params, static = eqx.partition(eqx.nn.MLP(1, 1, 40, 2, key=init_key), eqx.is_array)
    test_x, test_y = sample_tasks(test_key, 500, args.shots + 100)

    def evaluate(learner, theta):
        """Meta-test error: query MSE after adaptation on 500 unseen tasks."""
        errors = jax.jit(
            jax.vmap(learner.task_loss, in_axes=(None, 0, 0, None)), static_argnums=3
        )(theta, test_x, test_y, args.shots)
        return float(jnp.mean(errors))

    methods = {"MAML": "maml", "first-order MAML": "fomaml", "iMAML": "imaml"}

    def make_learner(method):
        if method == "imaml":  # a proximal problem solved further: memory is flat
            return Learner(static, method, args.imaml_steps, inner_lr=0.02)
        return Learner(static, method, args.inner_steps)

    query = lambda a: a[:, args.shots :]
    no_adaptation = lambda learner, theta: float(
        jax.vmap(learner.loss, in_axes=(None, 0, 0))(
            theta, query(test_x), query(test_y)
        ).mean()
    )
    print(
        f"sinusoid regression, {args.shots} shots, {args.inner_steps} inner steps, "
        f"task batch {args.task_batch}, {args.meta_steps} meta-iterations"
    )
    learner = Learner(static, "maml", args.inner_steps)
    print(
        f"meta-test MSE of the initial θ: {no_adaptation(learner, params):.3f} "
        f"without adaptation, {evaluate(learner, params):.3f} after {args.inner_steps} "
        "steps"
    )
    curves = {}
    print(f"\n{'method':<20}{'meta-test MSE':>14}{'no adaptation':>15}{'time':>9}")
    for name, method in methods.items():
        learner = make_learner(method)
        theta, curve, elapsed = meta_train(learner, params, train_key, args, evaluate)
        curves[name] = curve
        print(
            f"{name:<20}{curve[-1][1]:>14.3f}{no_adaptation(learner, theta):>15.3f}"
            f"{elapsed:>8.1f}s"
        )

    print("\nmemory of one meta-gradient (compiled: temporaries + outputs):")
    for name, method in methods.items():
        learner = make_learner(method)
        few, many = (meta_gradient_memory(learner, params, args, t) for t in (5, 50))
        print(
            f"  {name:<18} T=5: {few / 2**20:6.2f} MiB   T=50: {many / 2**20:6.2f} MiB"
        )

    import matplotlib.pyplot as plt

    os.makedirs(args.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        steps, errors = zip(*curve, strict=True)
        ax.plot(steps, errors, marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("meta-test MSE after adaptation")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "meta_learning.png")
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
