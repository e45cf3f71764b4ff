"""Learn a per-step learning-rate schedule and the weight decay of SGD by metagradients.

An MLP (64 → 32 → 10, tanh) is trained from a fixed initialisation for T steps of
minibatch SGD on scikit-learn's digits (1000 train / 400 validation / 397 test,
standardised):

    θ_{t+1} = θ_t - exp(s_t) ∇_θ [CE(θ_t; batch_t) + ½ exp(ω) ‖θ_t‖²],  t = 0..T-1.

The outer variables are the log learning rates s ∈ R^T and the log weight decay ω;
the outer loss is the validation cross-entropy of θ_T. Its gradient is taken by
back-propagating through the whole training run with
`bilevax.implicit.iterate(..., adjoint=UnrolledAdjoint())` (checkpointed, memory
O(√T)), and (s, ω) are updated by Adam. Every meta step averages the
metagradient over 4 training runs with fresh minibatch orders (vmapped), so the
schedule is learned for training runs in general, not for one sequence of batches.

The schedule starts from the best constant learning rate of a small grid (same T,
same starting weight decay) and is refined by metagradients; both are evaluated on
the same 16 held-out batch orders.

Run: python examples/learning_rate_schedule.py [--steps 200] [--meta-steps 300]
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import optax

import bilevax as bx


def init_mlp(key, sizes=(64, 32, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (m, n)) / jnp.sqrt(m), jnp.zeros(n))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params, X):
    for W, b in params[:-1]:
        X = jnp.tanh(X @ W + b)
    W, b = params[-1]
    return X @ W + b


def cross_entropy(params, X, y):
    logits = mlp(params, X)
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def accuracy(params, X, y):
    return jnp.mean(jnp.argmax(mlp(params, X), axis=1) == y)


def make_training_run(data, num_steps, batch_size, init_key, max_cotangent_norm):
    X, y = data.train
    params0 = init_mlp(init_key)

    def step(params, hyper, t, batch, key):
        log_lr, log_wd = hyper
        idx = jax.random.randint(key, (batch_size,), 0, X.shape[0])

        def loss(p):
            l2 = sum(jnp.sum(W**2) for W, _ in p)
            return cross_entropy(p, X[idx], y[idx]) + 0.5 * jnp.exp(log_wd) * l2

        grads = jax.grad(loss)(params)
        lr = jnp.exp(log_lr[t])
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)

    def train(hyper, key):
        return bx.implicit.iterate(
            step,
            params0,
            hyper,
            num_steps,
            key=key,
            adjoint=bx.implicit.UnrolledAdjoint(max_cotangent_norm=max_cotangent_norm),
        )

    return train


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="SGD steps T")
    parser.add_argument("--meta-steps", type=int, default=300)
    parser.add_argument("--meta-lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--runs-per-step",
        type=int,
        default=4,
        help="training runs (batch orders) averaged per meta step",
    )
    parser.add_argument(
        "--max-cotangent-norm",
        type=float,
        default=None,
        help="clip the back-propagated cotangent at every step",
    )
    parser.add_argument(
        "--init-lr",
        type=float,
        default=None,
        help="start of the schedule (default: the best constant)",
    )
    parser.add_argument("--init-weight-decay", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args()

    data = bx.datasets.digits(sizes=(1000, 400), seed=args.seed)
    key = jax.random.key(args.seed)
    init_key, meta_key, eval_key = jax.random.split(key, 3)
    train = make_training_run(
        data, args.steps, args.batch_size, init_key, args.max_cotangent_norm
    )
    X_val, y_val = data.validation
    X_test, y_test = data.test

    def validation_loss(hyper, key):
        """Mean over `--runs-per-step` batch orders (vmapped training runs)."""
        keys = jax.random.split(key, args.runs_per_step)
        params = jax.vmap(train, in_axes=(None, 0))(hyper, keys)
        return jax.vmap(cross_entropy, in_axes=(0, None, None))(
            params, X_val, y_val
        ).mean()

    eval_keys = jax.random.split(eval_key, 16)

    @jax.jit
    def evaluate(hyper):
        params = jax.vmap(train, in_axes=(None, 0))(hyper, eval_keys)
        val = jax.vmap(cross_entropy, in_axes=(0, None, None))(params, X_val, y_val)
        acc = jax.vmap(accuracy, in_axes=(0, None, None))(params, X_test, y_test)
        return val.mean(), acc.mean()

    # Baseline: best constant learning rate on a grid.
    log_wd0 = jnp.log(args.init_weight_decay)
    grid = jnp.geomspace(0.01, 4.0, 11)
    grid_results = [
        evaluate((jnp.full(args.steps, jnp.log(lr)), log_wd0)) for lr in grid
    ]
    best = min(range(len(grid)), key=lambda i: float(grid_results[i][0]))
    best_val, best_acc = grid_results[best]
    print(
        f"best constant learning rate on a grid of {len(grid)}: "
        f"lr = {grid[best]:.3f}, validation loss {best_val:.4f}, "
        f"test accuracy {best_acc:.3f}"
    )

    init_lr = float(grid[best]) if args.init_lr is None else args.init_lr
    hyper = (jnp.full(args.steps, jnp.log(init_lr)), log_wd0)
    optimizer = optax.adam(args.meta_lr)
    opt_state = optimizer.init(hyper)

    @jax.jit
    def meta_step(hyper, opt_state, key):
        loss, grads = jax.value_and_grad(validation_loss)(hyper, key)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(hyper, updates), opt_state, loss

    start_val, start_acc = evaluate(hyper)
    print(
        f"start: constant lr {init_lr:.3f}, validation loss {start_val:.4f}, "
        f"test accuracy {start_acc:.3f}"
    )
    try:
        from tqdm import trange
    except ImportError:  # tqdm is optional

        def trange(n, **_):
            return range(n)

    history = []
    keys = jax.random.split(meta_key, args.meta_steps)
    start = time.perf_counter()
    for i in trange(args.meta_steps, desc="meta steps"):
        hyper, opt_state, loss = meta_step(hyper, opt_state, keys[i])
        history.append(float(loss))
    jax.block_until_ready(hyper)
    elapsed = time.perf_counter() - start
    learned_val, learned_acc = evaluate(hyper)
    lrs = jnp.exp(hyper[0])
    print(
        f"learned schedule: validation loss {learned_val:.4f}, test accuracy "
        f"{learned_acc:.3f}; lr from {lrs[0]:.3f} (first step) to {lrs[-1]:.3f} "
        f"(last), weight decay {jnp.exp(hyper[1]):.2e} "
        f"({args.meta_steps} meta steps in {elapsed:.1f}s)"
    )
    verdict = "beats" if learned_val < best_val else "does not beat"
    print(
        f"the learned schedule {verdict} the best constant learning rate on "
        f"validation loss ({learned_val:.4f} vs {best_val:.4f})"
    )

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'bilevax[examples]')")
        return
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "learning_rate_schedule.png")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(lrs, label="learned")
    ax1.axhline(float(grid[best]), color="gray", ls="--", label="best constant")
    ax1.set_yscale("log")
    ax1.set_xlabel("SGD step t")
    ax1.set_ylabel("learning rate")
    ax1.set_title("Learning-rate schedule")
    ax1.legend()
    ax2.plot(history, label="learned schedule (mean of the step's runs)")
    ax2.axhline(float(best_val), color="gray", ls="--", label="best constant (mean)")
    ax2.set_xlabel("meta step")
    ax2.set_ylabel("validation loss after T steps")
    ax2.set_title("Metagradient descent, digits MLP")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(
        f"saved the schedule and the validation-loss curve to {os.path.abspath(path)}"
    )


if __name__ == "__main__":
    main()
