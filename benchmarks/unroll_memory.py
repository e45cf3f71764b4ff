"""Memory and time of differentiating through a long training run.

The inner loop is `T` steps (default 10,000) of minibatch SGD on a multinomial
logistic regression with 1e5 parameters (1000 features × 100 classes, minibatches of
8 rows of a fixed synthetic dataset, float32). The outer variables are the log
learning rate and log weight decay; the hypergradient is that of the validation
loss of the final weights. Adjoints compared, all through `bilevax.implicit.iterate`:

- naive:         `UnrolledAdjoint(checkpoints="all")`, i.e. `lax.scan` storing every
                 step (what `jax.grad` of a plain loop does);
- checkpointed:  `UnrolledAdjoint()` (binomial checkpointing, ~√T checkpoints);
- truncated:     `TruncatedAdjoint(K=100)`;
- implicit:      `ImplicitAdjoint` with the stationarity condition of the full-batch
                 regularised loss and CG.

Memory is the compiled program's own account (`memory_analysis()` of the compiled
`jax.grad`: temporaries plus outputs; arguments are the same for every adjoint).
Time is post-compile (compile reported apart), median of `--repeats` runs, each
ended by `jax.block_until_ready`.

Run: python benchmarks/unroll_memory.py [--steps 10000] [--repeats 3]
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import bilevax as bx


def make_problem(n, d, k, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    W_true = jax.random.normal(keys[0], (d, k)) / jnp.sqrt(d)
    X = jax.random.normal(keys[1], (n, d))
    Xv = jax.random.normal(keys[2], (n, d))
    y = jnp.argmax(X @ W_true + jax.random.gumbel(keys[3], (n, k)), axis=1)
    yv = jnp.argmax(Xv @ W_true + jax.random.gumbel(keys[4], (n, k)), axis=1)
    return X, y, Xv, yv


def cross_entropy(W, X, y):
    logits = X @ W
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def hypergradient_fn(adjoint, num_steps, batch_size, num_classes):
    def outer(hyper, data):
        X, y, Xv, yv = data
        n_batches = X.shape[0] // batch_size
        log_lr, log_wd = hyper

        def train_loss(W, hyper, Xb, yb):
            return cross_entropy(W, Xb, yb) + 0.5 * jnp.exp(hyper[1]) * jnp.sum(W**2)

        def step(W, hyper, t):
            start = (t % n_batches) * batch_size
            Xb = jax.lax.dynamic_slice_in_dim(X, start, batch_size)
            yb = jax.lax.dynamic_slice_in_dim(y, start, batch_size)
            return W - jnp.exp(hyper[0]) * jax.grad(train_loss)(W, hyper, Xb, yb)

        if adjoint == "implicit":
            condition = bx.implicit.conditions.stationarity(
                lambda W, hyper: train_loss(W, hyper, X, y)
            )
            cg = bx.implicit.CG(rtol=1e-4, max_steps=200)
            adjoint_ = bx.implicit.ImplicitAdjoint(cg, condition=condition)
        else:
            adjoint_ = adjoint
        W0 = jnp.zeros((X.shape[1], num_classes))
        W = bx.implicit.iterate(step, W0, hyper, num_steps, adjoint=adjoint_)
        return cross_entropy(W, Xv, yv)

    return jax.grad(outer)


def measure(fn, args, repeats):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    nbytes = memory.temp_size_in_bytes + memory.output_size_in_bytes
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return out, compile_s, statistics.median(times), nbytes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--K", type=int, default=100)
    args = parser.parse_args()
    n, d, k, batch = 512, 1000, 100, 8
    data = make_problem(n, d, k)
    hyper = jnp.array([jnp.log(0.05), jnp.log(1e-3)])
    device = jax.devices()[0]
    print(
        f"bilevax {bx.__version__}, jax {jax.__version__}, {device.platform} "
        f"({device.device_kind}), {platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"T = {args.steps} SGD steps, {d * k:.0e} parameters (float32), "
        f"minibatch {batch}; hypergradient w.r.t. (log lr, log weight decay)\n"
    )
    adjoints = {
        "naive scan": bx.implicit.UnrolledAdjoint(checkpoints="all"),
        "checkpointed": bx.implicit.UnrolledAdjoint(),
        f"truncated K={args.K}": bx.implicit.TruncatedAdjoint(args.K),
        "implicit (CG)": "implicit",
    }
    header = (
        f"{'adjoint':<16}{'memory MB':>11}{'vs naive':>10}{'compile s':>11}"
        f"{'run s':>9}{'vs naive':>10}  hypergradient"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for name, adjoint in adjoints.items():
        fn = hypergradient_fn(adjoint, args.steps, batch, k)
        out, compile_s, run_s, nbytes = measure(fn, (hyper, data), args.repeats)
        results[name] = (nbytes, run_s)
        base_bytes, base_s = results["naive scan"]
        print(
            f"{name:<16}{nbytes / 2**20:>11.1f}{nbytes / base_bytes:>9.3f}x"
            f"{compile_s:>11.1f}{run_s:>9.2f}{run_s / base_s:>9.2f}x  "
            f"{[round(float(v), 5) for v in out]}"
        )
    mem_ratio = results["checkpointed"][0] / results["naive scan"][0]
    time_ratio = results["checkpointed"][1] / results["naive scan"][1]
    print(
        f"\ncheckpointed vs naive: memory {mem_ratio:.3f}x (goal <= 0.1), "
        f"time {time_ratio:.2f}x (goal <= 3)"
    )


if __name__ == "__main__":
    main()
