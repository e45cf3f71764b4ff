"""A whole hyperparameter run: bilevax (cold and warm-started adjoints) vs peers.

Problem (as `benchmarks/implicit_hypergradient.py`): multinomial logistic regression
with one log-L2 strength per feature θ ∈ R^d, inner loss on the training set, outer
loss (cross-entropy) on the validation set. The run is `--steps` outer Adam steps on
θ from θ = 0, each solving the inner problem (warm-started from the previous inner
solution, for every library) and its adjoint system by CG to the same relative
tolerance `tol`:

- bilevax cold: `bilevax.bilevel.hypergradient(..., LBFGS, ImplicitAdjoint(CG(tol)))`
  in a `lax.scan`, adjoint CG started from zero;
- bilevax warm: the same, with `adjoint_y0` = the previous step's adjoint vector
  (HOAG's warm start; what `HypergradientDescent(warm_start=True)` and `HOAG` do);
- jaxopt: `jaxopt.LBFGS(tol)` whose `run` is implicitly differentiated by
  `jaxopt.linear_solve.solve_cg` (jaxopt's `custom_root`);
- optimistix: `optx.minimise(LBFGS(tol), adjoint=ImplicitAdjoint(bilevax CG(tol)))`
  (lineax's own CG breaks down in float32 at scale, see `bilevax.implicit.CG`).

Reported per library: run time after compilation (the run is compiled first, then
timed once more, `--repeats` times round-robin, median), the total number of adjoint
CG iterations (bilevax reports them; the peers do not), and the final validation
loss.

Run: python benchmarks/bilevel_run.py [--sizes small large] [--float32]
     [--steps 100] [--repeats 3]
"""

import argparse
import functools as ft
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
import optimistix as optx
from implicit_hypergradient import SIZES, cross_entropy, make_data, make_problem

import bilevax as bx


def bilevax_run(data, k, steps, lr, tol, warm):
    """`(final θ, validation loss, total CG iterations)` of the bilevax run."""
    X, y, Xv, yv = data
    d = X.shape[1]
    problem = bx.bilevel.BilevelProblem(
        outer=lambda theta, W, _: cross_entropy(W, Xv, yv),
        inner=lambda theta, W, _: make_problem(data)[0](W, theta),
    )
    inner = bx.bilevel.LBFGS(2000)
    adjoint = bx.implicit.ImplicitAdjoint(bx.implicit.CG(rtol=tol, max_steps=1000))
    optimizer = optax.adam(lr)

    def step(carry, _):
        theta, W, v, opt_state = carry
        value, grad, W, stats = bx.bilevel.hypergradient(
            problem,
            theta,
            W,
            inner,
            adjoint,
            tol=tol,
            adjoint_y0=v if warm else None,
            throw=False,
        )
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        carry = (optax.apply_updates(theta, updates), W, stats.adjoint, opt_state)
        return carry, stats.linear_steps

    theta0 = jnp.zeros(d, X.dtype)
    W0 = jnp.zeros((d, k), X.dtype)
    init = (theta0, W0, jnp.zeros_like(W0), optimizer.init(theta0))
    (theta, W, _, _), cg_steps = jax.lax.scan(step, init, None, length=steps)
    return theta, cross_entropy(W, Xv, yv), jnp.sum(cg_steps)


def peer_run(data, k, steps, lr, tol, library):
    """`(final θ, validation loss, -1)` of the run written with a peer library."""
    X, y, Xv, yv = data
    d = X.shape[1]
    inner, outer = make_problem(data)
    if library == "jaxopt":
        import jaxopt

        solve = ft.partial(jaxopt.linear_solve.solve_cg, tol=tol, maxiter=1000)
        lbfgs = jaxopt.LBFGS(
            fun=inner, tol=tol, maxiter=2000, implicit_diff_solve=solve
        )
        fit = lambda W0, theta: lbfgs.run(W0, theta).params
    else:
        adjoint = optx.ImplicitAdjoint(bx.implicit.CG(rtol=tol, max_steps=1000))
        fit = lambda W0, theta: (
            optx.minimise(
                inner,
                optx.LBFGS(rtol=tol, atol=tol),
                W0,
                args=theta,
                max_steps=2000,
                adjoint=adjoint,
                throw=False,
            ).value
        )
    optimizer = optax.adam(lr)

    def step(carry, _):
        theta, W, opt_state = carry

        def loss(t):
            W_new = fit(W, t)
            return outer(W_new), W_new

        grad, W_new = jax.grad(loss, has_aux=True)(theta)
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        return (optax.apply_updates(theta, updates), W_new, opt_state), None

    theta0 = jnp.zeros(d, X.dtype)
    init = (theta0, jnp.zeros((d, k), X.dtype), optimizer.init(theta0))
    (theta, W, _), _ = jax.lax.scan(step, init, None, length=steps)
    return theta, outer(W), jnp.array(-1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES))
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args()
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    tol = 1e-5 if args.float32 else 1e-8
    print(
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"{jax.devices()[0].platform}, {jnp.dtype(dtype).name}, tol {tol}, "
        f"{args.steps} outer Adam steps"
    )
    runs = {
        "bilevax cold": ft.partial(bilevax_run, warm=False),
        "bilevax warm": ft.partial(bilevax_run, warm=True),
        "jaxopt": ft.partial(peer_run, library="jaxopt"),
        "optimistix": ft.partial(peer_run, library="optimistix"),
    }
    for size in args.sizes:
        n, d, k = SIZES[size]
        data = make_data(n, d, k, dtype)
        compiled, out, times = {}, {}, {name: [] for name in runs}
        for name, run in runs.items():
            fn = jax.jit(
                lambda data, run=run, k=k: run(data, k, args.steps, args.lr, tol)
            )
            start = time.perf_counter()
            compiled[name] = fn.lower(data).compile()
            out[name] = jax.block_until_ready(compiled[name](data))
            print(f"  compiled and ran {name} in {time.perf_counter() - start:.1f} s")
        for _ in range(args.repeats):
            for name in runs:
                start = time.perf_counter()
                jax.block_until_ready(compiled[name](data))
                times[name].append(time.perf_counter() - start)
        print(f"\n{size}: {d * k} inner parameters, {n} training samples")
        print(
            "| run | time (s) | vs bilevax warm | adjoint CG iterations | "
            "final validation loss |"
        )
        print("|---|---|---|---|---|")
        base = statistics.median(times["bilevax warm"])
        for name in runs:
            t = statistics.median(times[name])
            _, loss, cg = out[name]
            cg = "n/a" if int(cg) < 0 else str(int(cg))
            print(f"| {name} | {t:.2f} | {t / base:.2f}x | {cg} | {float(loss):.6f} |")


if __name__ == "__main__":
    main()
