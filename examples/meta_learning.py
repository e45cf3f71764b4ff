"""Few-shot sinusoid regression (Finn et al. 2017): MAML, first-order MAML and
implicit MAML (Rajeswaran et al. 2019), each vmapped over a batch of tasks.

A task is `y = A sin(x - φ)` with `A ~ U[0.1, 5]`, `φ ~ U[0, π]`, `x ~ U[-5, 5]`;
`K` support points adapt the model, query points score it. The model is an MLP
1-40-40-1. Meta-parameters `θ` are learned so that adapting from them works:

- MAML: adapted `φ_T(θ)` = `T` gradient steps from `θ`, differentiated through the
  steps (`bx.implicit.iterate` with `UnrolledAdjoint`, memory grows with `T`);
- first-order MAML: the same steps, the query gradient at `φ_T` used as is;
- iMAML: `φ*(θ) = argmin_φ L_support(φ) + λ/2 ‖φ - θ‖²` (`--prox` λ = 0.2), solved
  by `--imaml-steps` gradient steps (`--imaml-lr` 0.02), differentiated implicitly
  (`bx.implicit.custom_root`, `--cg-steps` 10 CG steps on `(H + λI) v = ∇L_query`):
  memory does not depend on the number of steps.

Every meta-gradient is `jax.grad` of the mean query loss over a `jax.vmap` of the
task batch, with `θ` shared across the batch.

Prints the meta-test error (query MSE after adaptation on 500 unseen tasks), mean ±
std over `--seeds` seeds (initialisation, training and test tasks), the compiled
memory of one meta-gradient for two values of `T`, and saves a plot of meta-test
error against meta-iterations (first seed).

Run: python examples/meta_learning.py [--seeds 5] [--meta-steps 2000]
     [--inner-steps 5] [--imaml-steps 25] [--prox 0.2] [--methods maml imaml]
"""

import argparse
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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


def make_chunk(learner, args):
    """Jitted run of `meta_steps // 10` meta-iterations (Adam), compiled once and
    reused across seeds."""
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

    return optimizer, chunk


def meta_train(chunk, theta, key, evaluate, args):
    optimizer, chunk = chunk
    opt_state = optimizer.init(theta)
    curve = [(0, evaluate(theta))]
    start = time.perf_counter()
    for i, k in enumerate(jax.random.split(key, 10)):
        theta, opt_state = jax.block_until_ready(chunk(theta, opt_state, k))
        curve.append(((i + 1) * (args.meta_steps // 10), evaluate(theta)))
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


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-steps", type=int, default=2000)
    parser.add_argument("--inner-steps", type=int, default=5, help="MAML, FOMAML")
    parser.add_argument("--imaml-steps", type=int, default=25, help="iMAML")
    parser.add_argument("--imaml-lr", type=float, default=0.02, help="iMAML inner rate")
    parser.add_argument("--prox", type=float, default=0.2, help="iMAML's λ")
    parser.add_argument("--cg-steps", type=int, default=10, help="iMAML")
    parser.add_argument("--task-batch", type=int, default=25)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--meta-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds")
    parser.add_argument(
        "--methods", nargs="+", default=["maml", "fomaml", "imaml"], choices=NAMES
    )
    parser.add_argument("--out", default="outputs")
    return parser.parse_args()


NAMES = {"maml": "MAML", "fomaml": "first-order MAML", "imaml": "iMAML"}


def make_learner(static, method, args):
    if method == "imaml":  # a proximal problem solved further: memory is flat
        return Learner(
            static, method, args.imaml_steps, args.imaml_lr, args.prox, args.cg_steps
        )
    return Learner(static, method, args.inner_steps)


def seed_setup(seed, args):
    """Initial `θ`, the MLP's static part, training key, 500 meta-test tasks."""
    init_key, train_key, test_key = jax.random.split(jax.random.key(seed), 3)
    params, static = eqx.partition(eqx.nn.MLP(1, 1, 40, 2, key=init_key), eqx.is_array)
    return params, static, train_key, sample_tasks(test_key, 500, args.shots + 100)


def make_evaluate(learner, args):
    """Meta-test error: query MSE after adaptation on unseen tasks."""
    errors = jax.jit(
        jax.vmap(learner.task_loss, in_axes=(None, 0, 0, None)), static_argnums=3
    )
    return lambda theta, test: float(jnp.mean(errors(theta, *test, args.shots)))


def train_seeds(method, seeds, args):
    """Meta-trains `method` from every seed: final errors, first curve, time."""
    learner = make_learner(seeds[0][1], method, args)
    chunk, evaluate = make_chunk(learner, args), make_evaluate(learner, args)
    finals, curves, elapsed = [], [], 0.0
    for params, _, train_key, test in seeds:
        ev = lambda theta, test=test: evaluate(theta, test)
        _, curve, seconds = meta_train(chunk, params, train_key, ev, args)
        finals.append(curve[-1][1])
        curves.append(curve)
        elapsed += seconds
    return np.array(finals), curves[0], elapsed / len(seeds)


def main():
    args = parse_args()
    seeds = [seed_setup(args.seed + s, args) for s in range(args.seeds)]
    maml = make_learner(seeds[0][1], "maml", args)
    evaluate = make_evaluate(maml, args)
    initial = np.mean([evaluate(params, test) for params, *_, test in seeds])
    print(
        f"sinusoid regression, {args.shots} shots, task batch {args.task_batch}, "
        f"{args.meta_steps} meta-iterations, seeds {args.seed}..."
        f"{args.seed + args.seeds - 1}; MAML/FOMAML {args.inner_steps} inner steps; "
        f"iMAML λ {args.prox}, {args.imaml_steps} inner steps (rate "
        f"{args.imaml_lr}), {args.cg_steps} CG steps"
    )
    print(
        f"meta-test MSE of the initial θ: {initial:.3f} after {args.inner_steps} steps"
    )
    print(f"\n{'method':<20}{'meta-test MSE (mean ± std)':>28}{'time/seed':>11}")
    curves = {}
    for method in args.methods:
        finals, curves[NAMES[method]], seconds = train_seeds(method, seeds, args)
        std = finals.std(ddof=1) if len(finals) > 1 else 0.0
        print(
            f"{NAMES[method]:<20}{finals.mean():>17.3f} ± {std:<8.3f}{seconds:>10.1f}s"
            f"   ({' '.join(f'{f:.3f}' for f in finals)})"
        )
    print("\nmemory of one meta-gradient (compiled: temporaries + outputs):")
    for method in args.methods:
        learner = make_learner(seeds[0][1], method, args)
        few, many = (
            meta_gradient_memory(learner, seeds[0][0], args, t) for t in (5, 50)
        )
        print(
            f"  {NAMES[method]:<18} T=5: {few / 2**20:6.2f} MiB   "
            f"T=50: {many / 2**20:6.2f} MiB"
        )
    plot(curves, args.out)


def plot(curves, out):
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        steps, errors = zip(*curve, strict=True)
        ax.plot(steps, errors, marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("meta-test MSE after adaptation")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, "meta_learning.png")
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
