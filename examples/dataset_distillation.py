"""Dataset distillation (KIP, RCIG-style): learn a few synthetic images per class so
that a model fitted on them alone does well on the real test set.

    min_{X_s, Y_s}  loss on real data of the model fitted on (X_s, Y_s)

Inner models:
- `--model kernel` (default, KIP): kernel ridge regression with the NNGP kernel of
  a fully connected ReLU network (or `--kernel ntk|rbf`), fitted in closed form;
  evaluated by kernel ridge regression on the distilled set.
- `--model network` (RCIG-style): an MLP linearised around networks drawn from a
  pool, inner problem solved by CG and differentiated implicitly; evaluated by
  training the same (non-linearised) MLP from scratch on the distilled set.

Compared, with the same evaluation: a random real subset of the same size, and
the whole training set (for Fashion-MNIST a random 10,000 of its 60,000 images).
Saves a grid of the distilled images and a plot of test accuracy against steps.

Run: python examples/dataset_distillation.py      # digits, 1 and 10 images per class
     python examples/dataset_distillation.py --dataset fashion_mnist
     python examples/dataset_distillation.py --model network --ipc 10
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

C = 10


def load(dataset: str, seed: int, dtype):
    """Standardised `(X, y)` train and test arrays, images as `(n, side, side)`."""
    if dataset == "fashion_mnist":
        (X, y), (X_test, y_test) = bx.datasets.fashion_mnist(dtype=dtype)
        side = 28
    else:
        split = bx.datasets.digits(sizes=(1200, 100), seed=seed, dtype=dtype)
        (X, y), (X_test, y_test) = split.train, split.test
        side = 8
    X, X_test = np.asarray(X), np.asarray(X_test)
    mean, std = X.mean(), X.std()  # one channel: standardise all pixels together
    shape = lambda A: jnp.asarray(((A - mean) / std).reshape(-1, side, side), dtype)
    return (shape(X), jnp.asarray(y)), (shape(X_test), jnp.asarray(y_test))


def targets(labels, dtype):
    """KIP's regression targets: one-hot minus 1/C."""
    return jax.nn.one_hot(labels, C, dtype=dtype) - 1.0 / C


def random_subset(labels, per_class: int, rng) -> np.ndarray:
    labels = np.asarray(labels)
    return np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
            for c in range(C)
        ]
    )


class _Flat(eqx.Module):
    net: eqx.nn.MLP

    def __call__(self, x):
        return self.net(x.reshape(-1))


def network(side: int):
    """`key -> MLP(side² -> 512 -> 512 -> 10)` on one image."""
    return lambda key: _Flat(eqx.nn.MLP(side * side, C, 512, 2, key=key))


@eqx.filter_jit
def _kernel_fit(model, X_s, Y_s):
    return model.fit(X_s, Y_s)


@eqx.filter_jit
def _kernel_predictions(model, X_s, alpha, X):
    return jnp.argmax(model.predict(X_s, alpha, X), -1)


def kernel_accuracy(model, support, test) -> float:
    """Test accuracy of kernel ridge regression fitted once on `support` (test
    predictions in chunks of 2000)."""
    X_s, Y_s = support
    X_test, y_test = test
    alpha = _kernel_fit(model, X_s, Y_s)
    hits = sum(
        int(
            jnp.sum(
                _kernel_predictions(model, X_s, alpha, X_test[i : i + 2000])
                == y_test[i : i + 2000]
            )
        )
        for i in range(0, X_test.shape[0], 2000)
    )
    return hits / X_test.shape[0]


@eqx.filter_jit
def _train_and_score(make, key, X_s, Y_s, X_test, y_test, steps):
    """Train `make(key)` on `(X_s, Y_s)` (MSE to the targets, Adam 1e-3, batches of
    up to 256, `steps` steps) and return its test accuracy."""
    optimizer = optax.adam(1e-3)
    batch = min(X_s.shape[0], 256)
    init_key, data_key = jax.random.split(key)
    params, static = eqx.partition(make(init_key), eqx.is_array)

    def loss(p, idx):
        out = jax.vmap(eqx.combine(p, static))(X_s[idx])
        return jnp.mean(jnp.sum((out - Y_s[idx]) ** 2, -1))

    def step(carry, key):
        p, state = carry
        idx = jax.random.choice(key, X_s.shape[0], (batch,), replace=False)
        updates, state = optimizer.update(jax.grad(loss)(p, idx), state, p)
        return (optax.apply_updates(p, updates), state), None

    keys = jax.random.split(data_key, steps)
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), keys)
    logits = jax.vmap(eqx.combine(params, static))(X_test)
    return jnp.mean(jnp.argmax(logits, -1) == y_test)


def network_accuracy(make, support, test, key, steps=1000) -> float:
    """Test accuracy of a fresh network trained on `support`, mean over two
    initialisations."""
    accuracies = [
        _train_and_score(make, k, *support, *test, steps)
        for k in jax.random.split(key, 2)
    ]
    return float(jnp.mean(jnp.stack(accuracies)))


def save_grid(images, labels, path):
    import matplotlib.pyplot as plt

    n = images.shape[0]
    per_class = n // C
    fig, axes = plt.subplots(per_class, C, figsize=(C, per_class), squeeze=False)
    for ax, image, label in zip(
        axes.T.ravel(), np.asarray(images), np.asarray(labels), strict=True
    ):
        ax.imshow(image, cmap="gray")
        ax.set_title(str(int(label)), fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", choices=["digits", "fashion_mnist"], default="digits"
    )
    parser.add_argument("--model", choices=["kernel", "network"], default="kernel")
    parser.add_argument("--kernel", choices=["nngp", "ntk", "rbf"], default="nngp")
    parser.add_argument(
        "--ipc", type=int, nargs="+", default=[1, 10], help="images per class"
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument(
        "--eval-steps",
        type=int,
        default=1000,
        help="network training steps to evaluate",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)

    fmnist = args.dataset == "fashion_mnist"
    # kernel ridge in float64 (as KIP); the network in float32 (about 15x faster
    # on CPU)
    dtype = jnp.float64 if args.model == "kernel" else jnp.float32
    (X, y), test = load(args.dataset, args.seed, dtype)
    side = X.shape[1]
    Y = targets(y, dtype)
    rng = np.random.default_rng(args.seed)
    if args.model == "kernel":
        kernel = {
            "nngp": bx.bilevel.kernels.NNGP(),
            "ntk": bx.bilevel.kernels.NTK(),
            "rbf": bx.bilevel.kernels.RBF(),
        }[args.kernel]
        model = bx.bilevel.KernelRidge(kernel)
        optimizer = optax.adam(0.04)
        steps = args.steps or (1000 if fmnist else 500)
        evaluate = lambda support: kernel_accuracy(model, support, test)
    else:
        make = network(side)
        model = bx.bilevel.LinearizedNetwork(make)
        optimizer = optax.adam(0.01)
        steps = args.steps or (1000 if fmnist else 300)
        evaluate = lambda support: network_accuracy(
            make, support, test, jax.random.key(1), args.eval_steps
        )
    batch_size = args.batch_size or (2000 if fmnist else 500)
    distill = bx.bilevel.DatasetDistillation(model, optimizer, batch_size)

    full_idx = rng.permutation(X.shape[0])[:10_000]
    t = time.perf_counter()
    full = evaluate((X[full_idx], Y[full_idx]))
    full_time = time.perf_counter() - t
    name = f"{args.dataset}, {args.model}" + (
        f" ({args.kernel})" if args.model == "kernel" else ""
    )
    print(
        f"{name}: whole training set ({len(full_idx)} images): test accuracy "
        f"{full:.3f} ({full_time:.1f} s)"
    )

    os.makedirs(args.out, exist_ok=True)
    chunks = 10
    per_chunk = max(1, steps // chunks)
    run = eqx.filter_jit(
        lambda support, state, key, data: distill.run(
            support,
            data,
            key=key,
            num_steps=per_chunk,
            state=state,
            throw=False,  # a failed run is reported below by its status
        )
    )
    curves, histories, seconds = {}, {}, {}
    for ipc in args.ipc:
        idx = random_subset(y, ipc, rng)
        support = (X[idx], Y[idx])
        baseline = evaluate(support)
        key = jax.random.key(args.seed)
        state = distill.init(distill.problem(), support, None, None, key)
        jax.block_until_ready(run(support, state, key, (X, Y)))  # compile
        steps_done, accuracy, elapsed, records = [0], [baseline], 0.0, []
        for i in range(chunks):
            t = time.perf_counter()
            result = jax.block_until_ready(
                run(support, state, jax.random.fold_in(key, i), (X, Y))
            )
            elapsed += time.perf_counter() - t
            if result.result != bx.bilevel.RESULTS.successful:
                print(f"  run stopped: {result.result}")
                break
            state = result.state
            history = result.history
            records.append(
                eqx.tree_at(lambda h: h.step, history, history.step + steps_done[-1])
            )
            steps_done.append(steps_done[-1] + per_chunk)
            accuracy.append(evaluate(result.x))
        curves[ipc] = (steps_done, accuracy)
        if records:
            label = f"{ipc} per class"
            histories[label] = jax.tree.map(lambda *a: jnp.concatenate(a), *records)
            seconds[label] = elapsed
        print(
            f"{ipc:>3} per class: random subset {baseline:.3f} -> distilled "
            f"{accuracy[-1]:.3f} after {steps_done[-1]} steps ({elapsed:.1f} s, "
            "compile excluded)"
        )
        grid = os.path.join(
            args.out, f"dataset_distillation_{args.dataset}_{args.model}_{ipc}.png"
        )
        X_s, Y_s = result.state.x
        save_grid(X_s, jnp.argmax(Y_s, -1), grid)
        print(f"    distilled images: {grid}")

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for ipc, (steps_done, accuracy) in curves.items():
        ax.plot(steps_done, accuracy, marker="o", label=f"{ipc} per class")
    ax.axhline(full, color="k", ls="--", label="whole training set")
    ax.set_xlabel("distillation step")
    ax.set_ylabel("test accuracy")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(
        args.out, f"dataset_distillation_{args.dataset}_{args.model}.png"
    )
    fig.savefig(path, dpi=120)
    print(f"accuracy plot: {path}")
    if histories:
        fig, _ = bx.bilevel.plot_history(histories, seconds=seconds, title=name)
        path = path.replace(".png", "_history.png")
        fig.savefig(path, dpi=120)
        print(f"loss and hypergradient norm against time: {path}")


if __name__ == "__main__":
    main()
