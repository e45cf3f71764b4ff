"""One weight decay per weight (Lorraine, Vicol, Duvenaud, AISTATS 2020): more than a
million hyperparameters, tuned by implicit hypergradients with a Neumann series.

    min_λ  CE_val(w*(λ)),   w*(λ) = argmin_w  CE_train(w) + ½ Σ_i exp(λ_i) w_i²

for an MLP with two hidden layers of 1024 units (1.1M weights on digits, 1.9M on
Fashion-MNIST), with `λ` shaped like the weights. Training alternates with
hypergradient steps (`bx.bilevel.HypergradientDescent`, warm-started): each outer
step takes `--inner-steps` gradient-descent steps on a training batch, then forms
the hypergradient on a validation batch with the Neumann series
`H⁻¹ ≈ α Σ_{j<=i} (I - αH)^j` (`bx.implicit.Neumann`, `α` the training rate) and
takes an Adam step on `λ`.

Compared against the best single weight decay from a small grid (chosen on the
validation loss, trained by the same loop). Also measured: the compiled memory and
the time of one hypergradient against one training step.

Run: python examples/per_parameter_weight_decay.py                  # digits
     python examples/per_parameter_weight_decay.py --dataset fashion_mnist
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


def load(dataset: str, seed: int, n_train: int, n_val: int):
    """Standardised train / validation / test `(X, y)` arrays."""
    if dataset == "fashion_mnist":
        (X, y), (X_test, y_test) = bx.datasets.fashion_mnist()
        X, y = np.asarray(X), np.asarray(y)
        order = np.random.default_rng(seed).permutation(X.shape[0])
        train, val = order[:n_train], order[n_train : n_train + n_val]
        parts = ((X[train], y[train]), (X[val], y[val]), (np.asarray(X_test), y_test))
    else:
        split = bx.datasets.digits(sizes=(n_train, n_val), seed=seed)
        parts = (split.train, split.validation, split.test)
    mean, std = np.asarray(parts[0][0]).mean(0), np.asarray(parts[0][0]).std(0)
    scale = lambda A: jnp.asarray((np.asarray(A) - mean) / np.where(std > 0, std, 1))
    return tuple((scale(X), jnp.asarray(y)) for X, y in parts)


def make_problem(static):
    """Inner: training cross-entropy + per-weight decay; outer: validation CE."""

    def cross_entropy(params, batch):
        X, y = batch
        logits = jax.vmap(eqx.combine(params, static))(X)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def inner(log_decay, params, batch):
        decay = jax.tree_util.tree_map(
            lambda lam, w: jnp.sum(jnp.exp(lam) * w**2), log_decay, params
        )
        return cross_entropy(params, batch) + 0.5 * sum(
            jax.tree_util.tree_leaves(decay)
        )

    def outer(log_decay, params, batch):
        return cross_entropy(params, batch)

    return bx.bilevel.BilevelProblem(outer, inner), cross_entropy


def memory_and_time(fn, *args, repeats=5):
    """Compiled working set of `fn` (bytes of arguments + temporaries + outputs, as
    XLA's `memory_analysis` accounts them) and its median time."""
    compiled = jax.jit(fn).lower(*args).compile()
    m = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    nbytes = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
    return nbytes, float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", choices=["digits", "fashion_mnist"], default="digits"
    )
    parser.add_argument("--outer-steps", type=int, default=300)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--neumann-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1, help="training step size")
    parser.add_argument("--hyper-lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args()

    fmnist = args.dataset == "fashion_mnist"
    train, val, test = load(
        args.dataset, args.seed, *((2000, 2000) if fmnist else (400, 400))
    )
    d = train[0].shape[1]
    params, static = eqx.partition(
        eqx.nn.MLP(d, 10, 1024, 2, key=jax.random.key(args.seed)), eqx.is_array
    )
    num_weights = sum(a.size for a in jax.tree_util.tree_leaves(params))
    print(
        f"{args.dataset}: {train[0].shape[0]} train / {val[0].shape[0]} validation / "
        f"{test[0].shape[0]} test; MLP {d}-1024-1024-10 with {num_weights:,} weights "
        f"= {num_weights:,} weight-decay hyperparameters"
    )
    problem, cross_entropy = make_problem(static)
    data = (train, val)
    inner_solver = bx.bilevel.GradientDescent(
        num_steps=args.inner_steps, stepsize=args.lr
    )
    adjoint = lambda steps: bx.implicit.ImplicitAdjoint(
        bx.implicit.Neumann(steps=steps, scale=args.lr)
    )

    def train_with(optimizer, log_decay, key, neumann_steps):
        algorithm = bx.bilevel.HypergradientDescent(
            optimizer,
            inner_solver,
            adjoint(neumann_steps),
            batch_size=args.batch_size,
            tol=0.0,  # always `inner_steps` training steps per outer step
        )
        return algorithm.run(
            problem, log_decay, params, data, key=key, num_steps=args.outer_steps
        )

    run = eqx.filter_jit(train_with)
    key = jax.random.key(args.seed + 1)
    evaluate = lambda w: (
        float(cross_entropy(w, val)),
        float(cross_entropy(w, test)),
        float(
            jnp.mean(
                jnp.argmax(jax.vmap(eqx.combine(w, static))(test[0]), -1) == test[1]
            )
        ),
    )
    like = lambda v: jax.tree_util.tree_map(lambda w: jnp.full_like(w, v), params)

    # grid over one weight decay, trained by the same loop with λ frozen
    grid, rows = [0.0, 1e-4, 1e-3, 1e-2, 1e-1], []
    row = "{:<28}{:>10.4f}{:>11.4f}{:>10.3f}{:>8.1f}s"
    print(f"\n{'weight decay':<28}{'val loss':>10}{'test loss':>11}{'test acc':>10}")
    for decay in grid:
        log_decay = like(np.log(max(decay, 1e-12)))  # 0 as 1e-12: λ stays finite
        start = time.perf_counter()
        # λ frozen: the hypergradient is discarded, so form the cheapest (0 terms)
        result = jax.block_until_ready(run(optax.set_to_zero(), log_decay, key, 0))
        elapsed = time.perf_counter() - start
        rows.append((decay, *evaluate(result.y)))
        print(row.format(f"scalar {decay:g}", *rows[-1][1:], elapsed))
    best = min(rows, key=lambda r: r[1])

    # one decay per weight, started at the best scalar (λ = log decay)
    start_decay = max(best[0], 1e-4)
    start = time.perf_counter()
    result = jax.block_until_ready(
        run(
            optax.adam(args.hyper_lr),
            like(np.log(start_decay)),
            key,
            args.neumann_steps,
        )
    )
    elapsed = time.perf_counter() - start
    per_weight = evaluate(result.y)
    print(
        f"{'per weight (Neumann IFT)':<28}{per_weight[0]:>10.4f}{per_weight[1]:>11.4f}"
        f"{per_weight[2]:>10.3f}{elapsed:>8.1f}s   ({result.result})"
    )
    decays = np.exp(
        np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(result.x)])
    )
    print(
        f"learned decays: median {np.median(decays):.2e}, 5%-95% "
        f"{np.quantile(decays, 0.05):.2e}-{np.quantile(decays, 0.95):.2e} "
        f"(started at {start_decay:g}); best scalar {best[0]:g}"
    )
    print(
        f"validation loss: per weight {per_weight[0]:.4f} vs best scalar {best[1]:.4f} "
        f"({'lower' if per_weight[0] < best[1] else 'NOT lower'})"
    )

    # memory and time of one hypergradient vs one training step (compiled, on one
    # batch; the working set counts the weights, λ and the batches passed in)
    batch = lambda part: jax.tree_util.tree_map(lambda a: a[: args.batch_size], part)
    step_data = (batch(train), batch(val))
    log_decay = like(np.log(start_decay))
    train_step = lambda lam, w, b: jax.tree_util.tree_map(
        lambda a, g: a - args.lr * g, w, jax.grad(problem.inner, argnums=1)(lam, w, b)
    )
    hyper = lambda lam, w, b: bx.bilevel.hypergradient(
        problem,
        lam,
        w,
        bx.bilevel.GradientDescent(num_steps=0, stepsize=args.lr),
        adjoint(args.neumann_steps),
        b,
        # timed at the untrained weights, where the Hessian is indefinite and a
        # 10-term series need not shrink the residual: this measures cost only
        throw=False,
    )[1]
    step_mem, step_time = memory_and_time(train_step, log_decay, params, step_data[0])
    hyper_mem, hyper_time = memory_and_time(hyper, log_decay, params, step_data)
    print(
        f"\none training step: {step_mem / 2**20:.1f} MiB, {1e3 * step_time:.1f} ms; "
        f"one hypergradient ({args.neumann_steps} Neumann terms): "
        f"{hyper_mem / 2**20:.1f} MiB ({hyper_mem / step_mem:.2f}x), "
        f"{1e3 * hyper_time:.1f} ms ({hyper_time / step_time:.1f}x)"
    )

    os.makedirs(args.out, exist_ok=True)
    fig, (loss_ax, _) = bx.bilevel.plot_history(
        {"per-weight decay": result},
        title=f"{num_weights:,} weight decays, {args.dataset}",
    )
    loss_ax.axhline(best[1], color="k", ls="--", label=f"best scalar decay {best[0]:g}")
    loss_ax.set_ylabel("validation cross-entropy")
    loss_ax.legend()
    path = os.path.join(args.out, f"per_parameter_weight_decay_{args.dataset}.png")
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
