"""Eager calls vs jitted calls: does a repeated eager call reuse its compiled program?

For `HOAG.run`, `F2SA.run`, `bilevax.solvers.minimize` and
`bilevax.bilevel.hypergradient` on small problems, three timings:
- first eager call: the public function called as is, compilation included;
- second eager call: the same call again, same arguments (median of `--repeats`);
- jitted call: `jax.jit` of a function of the arrays that makes the same call,
  compiled first (median of `--repeats`).

Every call ends with `jax.block_until_ready`. The second eager and the jitted calls
run round-robin (one each per round), so that drift in machine speed hits both.
The target is `second eager <= 1.5 x jitted`: an eager call then costs what its
compiled program costs, plus a little dispatch.

Problems (float32 unless `--float64`):
- HOAG, F2SA: ridge regression with one log-strength `x`, `y` of 20 weights,
  200 training and 100 validation samples; 50 HOAG steps, 200 F2SA steps with
  minibatches of 32.
- hypergradient: the same problem's hypergradient (implicit, CG).
- minimize: a 10-variable least squares with 3 equality constraints.

Where the eager overhead goes: `eqx.filter_jit` partitions every argument and
output in Python at each call (about 0.1-0.3 ms here), as long as the whole
compiled `hypergradient` of this problem. `hypergradient` and `project_polyhedron`
therefore call `jax.jit` with their configuration (problem functions, solvers,
tolerances) static when it is hashable and the other arguments are concrete arrays
(`bilevax._jit.EagerJit`), and do their checks at trace time. The runs, whose
compiled programs take milliseconds, keep `eqx.filter_jit`.

On a shared machine the medians move with the load: use `--repeats 9` or more.

Run: python benchmarks/eager_overhead.py [--repeats 7] [--float64]
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp

import bilevax as bx


def ridge(dtype):
    keys = jax.random.split(jax.random.key(0), 4)
    w = jax.random.normal(keys[0], (20,), dtype)
    X = jax.random.normal(keys[1], (200, 20), dtype)
    Xv = jax.random.normal(keys[2], (100, 20), dtype)
    t, tv = X @ w + jax.random.normal(keys[3], (200,), dtype), Xv @ w

    def inner(x, y, batch):
        A, b = batch
        return 0.5 * jnp.mean((A @ y - b) ** 2) + 0.5 * jnp.exp(x) * y @ y

    def outer(x, y, batch):
        A, b = batch
        return 0.5 * jnp.mean((A @ y - b) ** 2)

    problem = bx.bilevel.BilevelProblem(outer=outer, inner=inner)
    return problem, jnp.zeros((), dtype), jnp.zeros(20, dtype), ((X, t), (Xv, tv))


def cases(dtype):
    """name -> (function of the arrays, the arrays)."""
    problem, x0, y0, data = ridge(dtype)
    hoag, f2sa = bx.bilevel.HOAG(), bx.bilevel.F2SA(batch_size=32)
    A = jax.random.normal(jax.random.key(5), (3, 10), dtype)
    constrained = bx.solvers.ConstrainedProblem(
        lambda y, b: 0.5 * jnp.sum((y - b) ** 2), eq=lambda y, b: A @ y
    )
    b = jnp.arange(10, dtype=dtype)
    return {
        "HOAG.run (50 steps)": (
            lambda x0, y0, data: hoag.run(problem, x0, y0, data, num_steps=50),
            (x0, y0, data),
        ),
        "F2SA.run (200 steps)": (
            lambda x0, y0, data: f2sa.run(problem, x0, y0, data, num_steps=200),
            (x0, y0, data),
        ),
        "minimize": (
            lambda y0, b: bx.solvers.minimize(constrained, y0, b),
            (jnp.zeros(10, dtype), b),
        ),
        "hypergradient": (
            lambda x, y0, data: bx.bilevel.hypergradient(problem, x, y0, data=data),
            (x0, y0, data),
        ),
    }


def seconds(fn, args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def measure(fn, args, repeats):
    first = seconds(fn, args)
    jitted = jax.jit(fn)
    compile_jit = seconds(jitted, args)
    eager, compiled = [], []
    for _ in range(repeats):
        eager.append(seconds(fn, args))
        compiled.append(seconds(jitted, args))
    return first, statistics.median(eager), statistics.median(compiled), compile_jit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--float64", action="store_true")
    args = parser.parse_args()
    if args.float64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if args.float64 else jnp.float32
    print(
        f"jax {jax.__version__}, {jax.default_backend()}, {platform.processor()}, "
        f"{jnp.dtype(dtype).name}, median of {args.repeats}"
    )
    header = ("call", "1st eager s", "2nd eager ms", "jitted ms", "ratio", "target")
    print(f"{header[0]:22s} {'  '.join(f'{h:>12s}' for h in header[1:])}")
    for name, (fn, fn_args) in cases(dtype).items():
        first, eager, jitted, _ = measure(fn, fn_args, args.repeats)
        ratio = eager / jitted
        verdict = "ok" if ratio <= 1.5 else "MISSED"
        print(
            f"{name:22s} {first:12.2f}  {1e3 * eager:12.3f}  {1e3 * jitted:12.3f}  "
            f"{ratio:12.2f}  {verdict:>12s}"
        )


if __name__ == "__main__":
    main()
