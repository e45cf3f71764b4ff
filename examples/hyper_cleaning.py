"""Data hyper-cleaning (Franceschi et al. 2017): learn which training labels to trust.

Half of the training labels are corrupted (each replaced by one of the nine wrong
classes, uniformly). Every training sample i gets a weight sigmoid(x_i); the inner
problem fits a classifier to the weighted training loss, the outer problem is the
loss on a clean validation set:

    min_x  CE_val(w*(x)),   w*(x) = argmin_w  mean_i sigmoid(x_i) CE_i(w) + reg/2 ‖W‖².

Compared: no cleaning (all training samples), the clean-only oracle (trained on the
truly clean half), a model trained on the validation samples alone, and three
bilevel methods: IFT hypergradient descent, F2SA and the penalty method. A sample is
flagged corrupted when its weight is below 0.5 (x_i < 0); F1 of that flag against
the true corruption mask is reported, and the accuracy of a refit on the kept
training samples plus the validation set (what a user does with the weights).

Run: python examples/hyper_cleaning.py                 # Fashion-MNIST (Debian data)
     python examples/hyper_cleaning.py --dataset digits # scikit-learn digits
     python examples/hyper_cleaning.py --devices 8      # data-parallel, 8 devices

With `--devices N` the samples are sharded over N devices (`bx.bilevel.shard_data`,
variables replicated) and XLA splits every loss and gradient across them; on a CPU
the script asks JAX for N host devices.
"""

import argparse
import os
import sys
import time

if "--devices" in sys.argv:  # CPU devices must be requested before JAX starts
    _count = sys.argv[sys.argv.index("--devices") + 1]
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} "
        f"--xla_force_host_platform_device_count={_count}"
    )

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx

import bilevax as bx


def load(dataset: str, seed: int):
    """Standardised train/validation/test arrays and the corruption mask."""
    rng = np.random.default_rng(seed)
    if dataset == "fashion_mnist":
        (X, y), (X_test, y_test) = bx.datasets.fashion_mnist()
        X, y = np.asarray(X), np.asarray(y)
        order = rng.permutation(X.shape[0])
        train, val = order[:5000], order[5000:10000]
        X_train, y_train, X_val, y_val = X[train], y[train], X[val], y[val]
        X_test, y_test = np.asarray(X_test), np.asarray(y_test)
    else:
        split = bx.datasets.digits(sizes=(600, 600), seed=seed)
        (X_train, y_train), (X_val, y_val), (X_test, y_test) = (
            tuple(np.asarray(a) for a in part)
            for part in (split.train, split.validation, split.test)
        )
    mean, std = X_train.mean(0), X_train.std(0)
    scale = lambda A: jnp.asarray((A - mean) / np.where(std > 0, std, 1.0))
    n = X_train.shape[0]
    corrupted = np.zeros(n, bool)
    corrupted[rng.permutation(n)[: n // 2]] = True
    shift = rng.integers(1, 10, size=n)  # one of the nine wrong classes
    noisy = np.where(corrupted, (y_train + shift) % 10, y_train)
    return (
        (scale(X_train), jnp.asarray(noisy), jnp.asarray(y_train)),
        (scale(X_val), jnp.asarray(y_val)),
        (scale(X_test), jnp.asarray(y_test)),
        corrupted,
    )


def make_model(kind: str, d: int, key):
    if kind == "linear":
        params = (jnp.zeros((d, 10)), jnp.zeros(10))

        def apply(p, Z):
            return Z @ p[0] + p[1]

    else:
        k1, k2 = jax.random.split(key)
        params = (
            (jax.random.normal(k1, (d, 300)) / jnp.sqrt(d), jnp.zeros(300)),
            (jax.random.normal(k2, (300, 10)) / jnp.sqrt(300), jnp.zeros(10)),
        )

        def apply(p, Z):
            return jax.nn.sigmoid(Z @ p[0][0] + p[0][1]) @ p[1][0] + p[1][1]

    return params, apply


def cross_entropy(logits, labels):
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jax.nn.logsumexp(logits, axis=1) - picked


def weight_norm(p):
    leaves = jax.tree_util.tree_leaves(p)
    return sum(jnp.sum(a**2) for a in leaves if a.ndim == 2)


def f1_corrupted(x, corrupted):
    flagged = np.asarray(x) < 0
    tp = np.sum(flagged & corrupted)
    precision = tp / max(flagged.sum(), 1)
    recall = tp / max(corrupted.sum(), 1)
    return 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", choices=["fashion_mnist", "digits"], default="fashion_mnist"
    )
    parser.add_argument("--model", choices=["linear", "mlp"], default="linear")
    parser.add_argument("--steps", type=int, default=300, help="outer steps")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam step on x")
    parser.add_argument("--reg", type=float, default=1e-2)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="minibatch of F2SA and the penalty method (default: all)",
    )
    parser.add_argument("--methods", default="ift,f2sa,penalty")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--devices", type=int, default=1, help="shard the samples over N devices"
    )
    parser.add_argument("--out", default="outputs")
    args = parser.parse_args()

    (Z, noisy, _), (Z_val, y_val), (Z_test, y_test), corrupted = load(
        args.dataset, args.seed
    )
    n, d = Z.shape
    params0, apply = make_model(args.model, d, jax.random.key(args.seed))
    reg = args.reg

    def inner(x, p, batch):
        Zb, yb, idx = batch
        weights = jax.nn.sigmoid(x[idx])
        return jnp.mean(weights * cross_entropy(apply(p, Zb), yb)) + 0.5 * reg * (
            weight_norm(p)
        )

    def outer(x, p, batch):
        Zb, yb = batch
        return jnp.mean(cross_entropy(apply(p, Zb), yb))

    problem = bx.bilevel.BilevelProblem(outer=outer, inner=inner)
    data = bx.bilevel.BilevelData((Z, noisy, jnp.arange(n)), (Z_val, y_val))
    if args.devices > 1:
        devices = jax.devices()[: args.devices]
        if len(devices) < args.devices:
            raise SystemExit(f"--devices {args.devices}: JAX sees {len(devices)}.")
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        data = bx.bilevel.shard_data(data, mesh)
        print(f"samples sharded over {len(devices)} {devices[0].platform} devices")
    accuracy = jax.jit(
        lambda p: jnp.mean(jnp.argmax(apply(p, Z_test), axis=1) == y_test)
    )

    @jax.jit
    def fit(Zf, yf, w):
        """Weighted fit by L-BFGS: mean over sum(w) of w·CE + reg/2 ‖W‖²."""

        def loss(p, _):
            ce = cross_entropy(apply(p, Zf), yf)
            return jnp.sum(w * ce) / jnp.sum(w) + 0.5 * reg * weight_norm(p)

        sol = optx.minimise(
            loss, optx.LBFGS(rtol=1e-6, atol=1e-6), params0, max_steps=2000, throw=False
        )
        return sol.value

    rows = []
    clean = jnp.asarray(~corrupted, Z.dtype)
    Z_all = jnp.concatenate([Z, Z_val])
    y_all = jnp.concatenate([noisy, y_val])
    for name, (Zf, yf, w) in {
        "no cleaning": (Z, noisy, jnp.ones(n)),
        "clean-only oracle": (Z, noisy, clean),
        "validation only": (Z_val, y_val, jnp.ones(Z_val.shape[0])),
    }.items():
        start = time.perf_counter()
        acc = float(accuracy(jax.block_until_ready(fit(Zf, yf, w))))
        rows.append((name, acc, None, time.perf_counter() - start, None))
        print(f"{name:20s} test accuracy {acc:.4f}")

    inner_tol = 1e-3
    algorithms = {
        "ift": bx.bilevel.HypergradientDescent(
            optax.adam(args.lr),
            inner_solver=bx.bilevel.LBFGS(100),
            adjoint=bx.implicit.ImplicitAdjoint(
                bx.implicit.CG(rtol=inner_tol, max_steps=50)
            ),
            tol=inner_tol,
        ),
        "f2sa": bx.bilevel.F2SA(
            optimizer=optax.adam(args.lr),
            lambda0=10.0,
            lambda_growth=1.0,
            noise="none" if args.batch_size is None else "both",
            inner_steps=5,
            batch_size=args.batch_size,
        ),
        "penalty": bx.bilevel.PenaltyMethod(
            optimizer=optax.adam(args.lr),
            gamma_max=100.0,
            ramp_steps=100,
            y_steps=5,
            z_steps=5,
            batch_size=args.batch_size,
        ),
    }
    curves = {}
    x0 = jnp.zeros(n, Z.dtype)
    chunks = 10
    per_chunk = max(1, args.steps // chunks)
    for name in args.methods.split(","):
        algorithm = algorithms[name]
        state = algorithm.init(problem, x0, params0, data, jax.random.key(0))
        run = jax.jit(
            lambda state, key, algorithm=algorithm: algorithm.run(
                problem,
                x0,
                params0,
                data,
                key=key,
                num_steps=per_chunk,
                state=state,
                throw=False,  # a failed run is reported below by its status
            )
        )
        run(state, jax.random.key(0)).x.block_until_ready()  # compile
        elapsed, curve = 0.0, []
        for c in range(chunks):
            start = time.perf_counter()
            res = run(state, jax.random.fold_in(jax.random.key(args.seed), c))
            jax.block_until_ready(res)
            elapsed += time.perf_counter() - start
            state = res.state
            curve.append((elapsed, float(accuracy(res.y))))
            if res.result != bx.bilevel.RESULTS.successful:
                print(f"{name}: {res.result}")
                break
        curves[name] = curve
        f1 = f1_corrupted(res.x, corrupted)
        # What a user does next: keep the training samples the method trusts and
        # refit on them together with the validation set.
        kept = jnp.concatenate([res.x > 0, jnp.ones(Z_val.shape[0], bool)])
        refit = float(accuracy(fit(Z_all, y_all, kept.astype(Z.dtype))))
        rows.append((name, curve[-1][1], f1, elapsed, refit))
        print(
            f"{name:20s} test accuracy {curve[-1][1]:.4f}, F1 {f1:.3f}, "
            f"{elapsed:.1f}s ({per_chunk * chunks} outer steps, compile apart); "
            f"refit on kept + validation {refit:.4f}"
        )

    oracle = rows[1][1]
    val_only = rows[2][1]
    print(
        f"\n{args.dataset}, {args.model} model, {n} training samples (50% "
        f"corrupted), {Z_val.shape[0]} validation, {Z_test.shape[0]} test"
    )
    print(
        f"{'method':20s} {'test acc':>8s} {'F1':>6s} {'time s':>7s} {'refit':>6s}"
        "  verdict"
    )
    for name, acc, f1, seconds, refit in rows:
        f1s = "-" if f1 is None else f"{f1:.3f}"
        refits = "-" if refit is None else f"{refit:.4f}"
        verdict = ""
        if f1 is not None:
            near = "within 1 point of" if acc >= oracle - 0.01 else "below"
            beats = lambda a: "beats" if a > val_only else "does not beat"
            verdict = (
                f"{near} the oracle; {beats(acc)} validation-only, "
                f"its refit {beats(refit)} it"
            )
        print(f"{name:20s} {acc:8.4f} {f1s:>6s} {seconds:7.1f} {refits:>6s}  {verdict}")
    print(
        "refit: the same model fitted on the training samples the method keeps "
        "(weight > 0.5) plus the validation set."
    )

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'bilevax[examples]')")
        return
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"hyper_cleaning_{args.dataset}.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        ax.plot(*zip(*curve, strict=True), marker="o", label=name)
    for name, acc, f1, *_ in rows:
        if f1 is None:
            ax.axhline(acc, ls="--", lw=1, color="gray")
            ax.annotate(name, (0, acc), fontsize=8, va="bottom")
    ax.set_xlabel("time (s, compile apart)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Hyper-cleaning, {args.dataset}, {args.model}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved the accuracy-against-time plot to {os.path.abspath(path)}")


if __name__ == "__main__":
    main()
