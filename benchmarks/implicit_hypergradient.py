"""Implicit hypergradients of L2-regularised logistic regression: bilevax vs peers.

Problem: multinomial logistic regression with weights W of shape (d, k) and one
log-regularisation strength per feature θ ∈ R^d,

    inner  g(W, θ) = mean cross-entropy(X W) + ½ Σ_j exp(θ_j) ‖W_j‖²   (train set)
    outer  f(W)    = mean cross-entropy(X_v W)                          (validation)

and the hypergradient ∇_θ f(W*(θ)) for
- small:  d = 100,  k = 10  (1e3 inner parameters), n = 1000 train samples;
- large:  d = 1000, k = 100 (1e5 inner parameters), n = 2000 train samples.

Every library gets the same inner solve (optimistix L-BFGS started at a precomputed
solution, so that the implicit part dominates) and matrix-free CG on
Hessian-vector products for the adjoint system, all with the same stopping rule
`‖r‖₂ <= tol ‖b‖₂`:
- bilevax:    `custom_root(conditions.stationarity(g), bilevax.implicit.CG(tol))`;
- jaxopt:     `jaxopt.implicit_diff.custom_root(grad g, solve=solve_cg)`
              (jax.scipy's CG);
- optimistix: `optx.minimise(..., adjoint=optx.ImplicitAdjoint(bilevax CG))` (the
              same lineax solver object as bilevax; lineax's own CG breaks down on
              large float32 problems, see `bilevax.implicit.CG`).
Each row also reports its relative error against a tight reference solve.

Two tables per size: "to tolerance" (every CG with the same tolerance) and "same
work" (every CG runs exactly as many iterations as bilevax needed to reach the
tolerance), which compares the cost of the implementations at equal work.

Timing: `jax.jit` of `jax.grad`, compiled ahead of time (compile time reported
apart), then `--repeats` rounds in which every library runs once (round-robin, so
that drift in machine speed hits all alike), each call ended by
`jax.block_until_ready`; the median per library is reported.

Run: python benchmarks/implicit_hypergradient.py [--sizes small large] [--float32]
"""

import argparse
import functools as ft
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import lineax as lx
import optimistix as optx

import bilevax as bx

SIZES = {"small": (1000, 100, 10), "large": (2000, 1000, 100)}


def make_data(n, d, k, dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 5)
    W_true = jax.random.normal(keys[0], (d, k), dtype) / jnp.sqrt(d)
    X = jax.random.normal(keys[1], (n, d), dtype)
    Xv = jax.random.normal(keys[2], (n // 2, d), dtype)
    y = jnp.argmax(X @ W_true + jax.random.gumbel(keys[3], (n, k), dtype), axis=1)
    yv = jnp.argmax(
        Xv @ W_true + jax.random.gumbel(keys[4], (n // 2, k), dtype), axis=1
    )
    return X, y, Xv, yv


def cross_entropy(W, X, y):
    logits = X @ W
    picked = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


def make_problem(data):
    """Losses closing over `data`; called inside `jit`, so the data are traced
    arguments, not constants folded into the compiled program."""
    X, y, Xv, yv = data

    def inner(W, theta):
        return cross_entropy(W, X, y) + 0.5 * jnp.sum(jnp.exp(theta)[:, None] * W**2)

    def outer(W):
        return cross_entropy(W, Xv, yv)

    return inner, outer


def inner_solve(inner, tol, adjoint, init, theta):
    solver = optx.LBFGS(rtol=tol, atol=tol)
    sol = optx.minimise(
        inner,
        solver,
        init,
        args=theta,
        max_steps=2000,
        adjoint=adjoint,
        throw=False,
        # The Hessian at a minimum is symmetric PSD; lineax's CG requires the tag.
        tags=frozenset({lx.symmetric_tag, lx.positive_semidefinite_tag}),
    )
    return sol.value


def hypergradient_fns(tol, cg_tol, fixed_steps=None):
    """`(theta, W0, data) -> ∇_θ outer(W*(θ))` for each library.

    With `fixed_steps`, every CG runs exactly that many iterations (tolerance 0);
    optimistix is left out there, since its adjoint raises when a linear solve
    stops at its step limit.
    """
    if fixed_steps is None:
        cg = bx.implicit.CG(rtol=cg_tol, max_steps=1000)
        jaxopt_cg = dict(tol=cg_tol, maxiter=1000)
    else:
        cg = bx.implicit.CG(rtol=0.0, max_steps=fixed_steps)
        jaxopt_cg = dict(tol=0.0, maxiter=fixed_steps)
    checkpointed = optx.RecursiveCheckpointAdjoint()

    def with_bilevax(theta, W0, data):
        inner, outer = make_problem(data)
        solve = bx.implicit.custom_root(
            bx.implicit.conditions.stationarity(inner),
            cg,
            throw=fixed_steps is None,
        )(ft.partial(inner_solve, inner, tol, checkpointed))
        return outer(solve(W0, theta))

    def with_optimistix(theta, W0, data):
        inner, outer = make_problem(data)
        adjoint = optx.ImplicitAdjoint(linear_solver=cg)
        return outer(inner_solve(inner, tol, adjoint, W0, theta))

    def forward_only(theta, W0, data):
        inner, outer = make_problem(data)
        W = inner_solve(inner, tol, checkpointed, W0, theta)
        return outer(jax.lax.stop_gradient(W))

    fns = {"bilevax": jax.grad(with_bilevax)}
    try:
        import jaxopt
    except ImportError:
        print("jaxopt is not installed: its row is skipped (pip install jaxopt)")
    else:
        solve_cg = ft.partial(jaxopt.linear_solve.solve_cg, **jaxopt_cg)

        def with_jaxopt(theta, W0, data):
            inner, outer = make_problem(data)
            solve = jaxopt.implicit_diff.custom_root(jax.grad(inner), solve=solve_cg)(
                ft.partial(inner_solve, inner, tol, checkpointed)
            )
            return outer(solve(W0, theta))

        fns["jaxopt"] = jax.grad(with_jaxopt)
    if fixed_steps is None:
        fns["optimistix"] = jax.grad(with_optimistix)
    fns["forward only"] = forward_only
    return fns


def time_fns(fns, args, repeats):
    """Compile each function ahead of time, then time them round-robin (so that
    drift in the machine's speed hits all alike); median over `repeats` rounds."""
    compiled, compile_s, outs = {}, {}, {}
    for name, fn in fns.items():
        start = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(*args).compile()
        compile_s[name] = time.perf_counter() - start
        outs[name] = jax.block_until_ready(compiled[name](*args))  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    run_s = {name: statistics.median(ts) for name, ts in times.items()}
    return outs, compile_s, run_s


def print_table(title, fns, args, reference, repeats):
    outs, compile_s, run_s = time_fns(fns, args, repeats)
    print(title)
    header = (
        f"{'library':<14}{'compile s':>11}{'run ms':>10}{'vs bilevax':>12}"
        f"{'rel. error':>12}"
    )
    print(header)
    print("-" * len(header))
    for name in fns:
        if name == "forward only":
            error = "-"
        else:
            err = jnp.linalg.norm(outs[name] - reference) / jnp.linalg.norm(reference)
            error = f"{float(err):.1e}"
        ratio = run_s[name] / run_s["bilevax"]
        print(
            f"{name:<14}{compile_s[name]:>11.2f}{run_s[name] * 1e3:>10.2f}"
            f"{ratio:>11.2f}x{error:>12}"
        )
    return run_s


def run(size, dtype, repeats):
    n, d, k = SIZES[size]
    data = make_data(n, d, k, dtype)
    eps = jnp.finfo(dtype).eps
    tol, cg_tol = (1e-10, 1e-8) if eps < 1e-10 else (1e-6, 1e-5)
    theta = jnp.full((d,), jnp.log(1e-2), dtype)
    W0 = jnp.zeros((d, k), dtype)
    checkpointed = optx.RecursiveCheckpointAdjoint()

    @jax.jit
    def solve_and_reference(theta, data):
        inner, outer = make_problem(data)
        W = inner_solve(inner, tol, checkpointed, W0, theta)
        F = bx.implicit.conditions.stationarity(inner)
        u = jax.grad(outer)(W)
        tight = bx.implicit.CG(rtol=10 * eps, max_steps=5000)
        (reference,), _ = bx.implicit.root_vjp(
            F, W, (theta,), u, linear_solver=tight, throw=False
        )
        cg = bx.implicit.CG(rtol=cg_tol, max_steps=1000)
        _, stats = bx.implicit.root_vjp(F, W, (theta,), u, linear_solver=cg)
        return W, reference, stats

    W_star, reference, stats = jax.block_until_ready(solve_and_reference(theta, data))
    print(
        f"\n== {size}: n={n}, d={d}, k={k}: {d * k:.0e} inner parameters, "
        f"{d} hyperparameters, {jnp.dtype(dtype).name}; bilevax's CG took "
        f"{int(stats.num_steps)} steps, relative residual "
        f"{float(stats.residual):.1e}"
    )
    args = (theta, W_star, data)
    by_tolerance = print_table(
        f"to tolerance (CG rtol = atol = {cg_tol:g}):",
        hypergradient_fns(tol, cg_tol),
        args,
        reference,
        repeats,
    )
    steps = int(stats.num_steps)
    by_steps = print_table(
        f"same work ({steps} CG iterations each):",
        hypergradient_fns(tol, cg_tol, fixed_steps=steps),
        args,
        reference,
        repeats,
    )
    return by_tolerance, by_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["small", "large"], choices=list(SIZES)
    )
    parser.add_argument(
        "--float32", action="store_true", help="float32 instead of float64"
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    device = jax.devices()[0]
    print(
        f"bilevax {bx.__version__}, jax {jax.__version__}, device "
        f"{device.platform} ({device.device_kind}), {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    summary = {size: run(size, dtype, args.repeats) for size in args.sizes}
    print("\nratios of run times, peer / bilevax (above 1: bilevax is faster):")
    for size, (by_tolerance, by_steps) in summary.items():
        for label, results in [("to tolerance", by_tolerance), ("same work", by_steps)]:
            parts = [
                f"{peer}/bilevax = {results[peer] / results['bilevax']:.2f}"
                for peer in ("jaxopt", "optimistix")
                if peer in results
            ]
            print(f"  {size:<6} {label:<13} " + ", ".join(parts))


if __name__ == "__main__":
    main()
