"""Constrained solvers on CUTEst problems from sif2jax.

Two sets, each from the standard starting point, in float64 on the CPU:

- EQUALITY: the 24 equality-constrained and nonlinear-equation problems of the
  Hong, Na, Mahoney & Kolar (2023) test set that sif2jax has. Success: KKT residual
  `‖(∇f + Gᵀλ, c)‖₂ <= 1e-4` (their criterion), measured the same way for every
  solver, with the least-squares multipliers at the returned point.
- INEQUALITY: Hock-Schittkowski problems with inequalities and bounds. Success:
  objective within rel. 1e-6 of the book's value and violation <= 1e-6.

Solvers: bilevax `SketchedNewton` (default: dense LU KKT solves at these sizes;
randomized Kaczmarz and Gaussian sketches; equality set only) and
`AugmentedLagrangian`; the JAX SLSQP of `slsqp-jax`; SciPy `trust-constr` and
`SLSQP` (exact gradients and Jacobians from JAX, jitted). Time is wall time
after compilation (JAX solvers are run once to compile, then timed with
`jax.block_until_ready`; SciPy callbacks are compiled before the clock starts).

With `--all`, the sets are every sif2jax problem with at most 100 variables and
100 constraints: equality-only problems (and nonlinear equations) for EQUALITY,
those with inequalities or bounds for INEQUALITY (there success is the KKT
residual <= 1e-4 too when sif2jax records no optimal value). `--dtype float32`
runs the JAX solvers in float32 (residuals are measured in float64). Each
(problem, solver) runs in a child process killed after `--timeout` seconds
(compilation included), which counts as a failure.

Prints one row per problem and solver (iterations, KKT residual or objective
error, objective, expected objective, compile and post-compile time), then success
counts, median post-compile and compile times, and saves a performance profile
(Dolan & Moré) to `{out}/cutest_profile_{dtype}.png`.

Run: python benchmarks/cutest.py [--set equality|inequality|both] [--all]
     [--dtype float64|float32] [--timeout 60] [--solvers Sketched,SLSQP] [--out outputs]
Needs: pip install sif2jax slsqp-jax scipy matplotlib
"""

import argparse
import multiprocessing
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import bilevax as bx  # noqa: E402
from bilevax.datasets import cutest  # noqa: E402

S = bx.solvers
EQUALITY = (
    "HS6 HS7 HS28 HS40 HS42 HS47 HS48 HS51 HS52 HS77 HS78 BT2 BT3 BT5 BT9 BT10 BT11 "
    "BT12 HIMMELBA HIMMELBC BOOTH SINVALNE GOTTFR TRIGON1NE"
).split()
INEQUALITY = "HS21 HS23 HS35 HS43 HS44 HS65 HS71 HS76 HS100 HS113".split()
# the book's optimal values where sif2jax records none
BOOK_VALUES = {"HS76": -4.681818181818182}


def _kkt_residual(problem, y, args):
    """`‖(∇f + Gᵀλ, c)‖₂` with least-squares `λ` (equality problems)."""
    g = jax.grad(problem.objective)(y, args)
    G = jax.jacfwd(problem.eq)(y, args)
    lam = jnp.linalg.lstsq(G.T, -g)[0]
    return float(jnp.linalg.norm(jnp.concatenate([g + G.T @ lam, problem.eq(y, args)])))


def _violation(problem, y, args):
    parts = [jnp.zeros(1)]
    if problem.eq is not None:
        parts.append(jnp.abs(problem.eq(y, args)))
    if problem.ineq is not None:
        parts.append(jnp.maximum(problem.ineq(y, args), 0.0))
    if problem.bounds is not None:
        lower, upper = problem.bounds
        parts += [jnp.maximum(lower - y, 0.0), jnp.maximum(y - upper, 0.0)]
    return float(jnp.max(jnp.concatenate(parts)))


COMPILE = {}  # the last JAX solver's compile time, for the table


def _timed_jax(run, *xs):
    start = time.perf_counter()
    jax.block_until_ready(run(*xs))  # compile
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(run(*xs))
    seconds = time.perf_counter() - start
    COMPILE["last"] = max(first - seconds, 0.0)
    return out, seconds


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda v: (
            v.astype(dtype) if jnp.issubdtype(jnp.result_type(v), jnp.floating) else v
        ),
        tree,
    )


def bilevax_solver(solver):
    def solve(p, dtype=jnp.float64):
        run = jax.jit(
            lambda y0, args: S.minimize(p.problem, y0, args, solver, throw=False)
        )
        sol, seconds = _timed_jax(run, *_cast((p.y0, p.args), dtype))
        return sol.y, int(sol.stats["num_steps"]), seconds

    return solve


def slsqp_jax_solver(p, dtype=jnp.float64):
    import optimistix as optx
    import slsqp_jax

    problem = p.problem
    tolerance = slsqp_jax.ToleranceConfig(rtol=1e-10, atol=1e-10, max_steps=1000)
    kwargs = {}
    if problem.eq is not None:
        kwargs.update(eq_constraint_fn=problem.eq, n_eq_constraints=p.sizes[1])
    if problem.ineq is not None:
        kwargs.update(
            ineq_constraint_fn=lambda y, a: -problem.ineq(y, a),
            n_ineq_constraints=p.sizes[2],
        )
    if problem.bounds is not None:
        kwargs["bounds"] = jnp.stack(problem.bounds, axis=1)
    solver = slsqp_jax.SLSQP(
        config=slsqp_jax.SLSQPConfig(tolerance=tolerance), **kwargs
    )

    def run(y0, args):
        return optx.minimise(
            problem.objective, solver, y0, args, max_steps=1000, throw=False
        )

    sol, seconds = _timed_jax(jax.jit(run), *_cast((p.y0, p.args), dtype))
    return sol.value, int(sol.stats["num_steps"]), seconds


def scipy_solver(method):
    def solve(p, dtype=None):  # SciPy works in float64
        from scipy.optimize import Bounds, NonlinearConstraint, minimize

        problem, args = p.problem, p.args
        f = jax.jit(lambda y: problem.objective(y, args))
        df = jax.jit(jax.grad(lambda y: problem.objective(y, args)))
        constraints = []
        for fn, lo, hi in (
            (problem.eq, 0.0, 0.0),
            (problem.ineq, -np.inf, 0.0),
        ):
            if fn is not None:
                c = jax.jit(lambda y, fn=fn: fn(y, args))
                J = jax.jit(jax.jacfwd(lambda y, fn=fn: fn(y, args)))
                c(p.y0), J(p.y0)  # compile before the clock
                constraints.append(NonlinearConstraint(c, lo, hi, jac=J))
        f(p.y0), df(p.y0)
        bounds = None
        if problem.bounds is not None:
            bounds = Bounds(*(np.asarray(b) for b in problem.bounds))
        options = {"maxiter": 10_000}
        if method == "trust-constr":
            options.update(gtol=1e-10, xtol=1e-12)
        else:
            options.update(ftol=1e-12)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = minimize(
                f,
                np.asarray(p.y0),
                jac=df,
                method=method,
                bounds=bounds,
                constraints=constraints,
                options=options,
            )
        seconds = time.perf_counter() - start
        return jnp.asarray(res.x), int(res.nit), seconds

    return solve


def solvers_for(kind):
    out = {}
    if kind == "equality":
        out["SketchedNewton (Kaczmarz)"] = bilevax_solver(
            S.SketchedNewton(linear_solver=S.RandomizedKaczmarz(max_steps=100_000))
        )
        out["SketchedNewton (Gaussian)"] = bilevax_solver(
            S.SketchedNewton(linear_solver=S.GaussianSketch(max_steps=100_000))
        )
        # the default: a dense LU solve of the KKT systems of these small problems
        out["SketchedNewton (default)"] = bilevax_solver(S.SketchedNewton())
        out["AugmentedLagrangian"] = bilevax_solver(S.AugmentedLagrangian(tol=1e-6))
    else:
        out["AugmentedLagrangian"] = bilevax_solver(S.AugmentedLagrangian())
    out["slsqp-jax"] = slsqp_jax_solver
    out["scipy trust-constr"] = scipy_solver("trust-constr")
    out["scipy SLSQP"] = scipy_solver("SLSQP")
    return out


JAX_SOLVERS = ("SketchedNewton", "AugmentedLagrangian", "slsqp-jax")


def _score(kind, p, y):
    """(score, ok): the KKT residual (equality set, or no known optimum) or the
    relative objective error and the violation (inequality set)."""
    expected = BOOK_VALUES.get(p.name, p.expected_objective)
    y = _cast(y, jnp.float64)
    if kind == "equality" or expected is None:
        score = (
            _kkt_residual(p.problem, y, p.args)
            if kind == "equality"
            else _kkt_any(p.problem, y, p.args)
        )
        return score, score <= 1e-4
    value = float(p.problem.objective(y, p.args))
    score = abs(value - expected) / max(1.0, abs(expected))
    return score, score <= 1e-6 and _violation(p.problem, y, p.args) <= 1e-6


def _kkt_any(problem, y, args):
    """The KKT residual with bounds and inequalities: stationarity with the
    least-squares multipliers of the active rows (signs not enforced), and the
    violation."""
    rows = [jnp.zeros((0, y.size))]
    violation = _violation(problem, y, args)
    g = jax.grad(problem.objective)(y, args)
    if problem.eq is not None:
        rows.append(jax.jacfwd(problem.eq)(y, args))
    if problem.ineq is not None:
        h = problem.ineq(y, args)
        rows.append(
            jnp.where((h > -1e-6)[:, None], jax.jacfwd(problem.ineq)(y, args), 0)
        )
    if problem.bounds is not None:
        lower, upper = problem.bounds
        rows.append(jnp.diag(jnp.where(y - lower < 1e-6, -1.0, 0.0)))
        rows.append(jnp.diag(jnp.where(upper - y < 1e-6, 1.0, 0.0)))
    G = jnp.concatenate(rows)
    lam = jnp.linalg.lstsq(G.T, -g)[0]
    return max(float(jnp.max(jnp.abs(g + G.T @ lam))), violation)


def _child(kind, pname, sname, dtype, queue):
    jax.config.update("jax_enable_x64", True)
    p = cutest.load(pname)
    try:
        y, iters, seconds = solvers_for(kind)[sname](p, jnp.dtype(dtype))
        value = float(p.problem.objective(_cast(y, jnp.float64), p.args))
        score, ok = _score(kind, p, y)
        compile_s = COMPILE.pop("last", 0.0)
        queue.put((iters, score, value, seconds, compile_s, bool(ok), ""))
    except Exception as e:  # a peer crashing counts as a failure
        error = f"{type(e).__name__}: {str(e)[:300]}"
        queue.put((-1, np.nan, np.nan, np.nan, np.nan, False, error))


def _run_one(kind, pname, sname, dtype, timeout):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(kind, pname, sname, dtype, queue))
    proc.start()
    try:
        out = queue.get(timeout=timeout)
    except Exception:
        out = (-1, np.nan, np.nan, np.nan, np.nan, False, f"timeout {timeout}s")
    proc.kill()
    proc.join()
    return out


def run_set(kind, names, dtype="float64", timeout=60.0, only=None):
    print(f"\n=== {kind} set ({len(names)} problems, {dtype}) ===")
    solvers = [s for s in solvers_for(kind) if not only or any(o in s for o in only)]
    measure = "kkt" if kind == "equality" else "score"
    print(
        f"{'problem':10s} {'solver':26s} {'iters':>6s} {measure:>9s} "
        f"{'objective':>14s} {'compile s':>9s} {'time s':>9s}  ok"
    )
    table = {name: {} for name in solvers}  # solver -> problem -> (ok, s, compile)
    for pname in names:
        for sname in solvers:
            iters, score, value, seconds, compile_s, ok, error = _run_one(
                kind, pname, sname, dtype, timeout
            )
            table[sname][pname] = (ok and np.isfinite(score), seconds, compile_s)
            print(
                f"{pname:10s} {sname:26s} {iters:6d} {score:9.1e} {value:14.8g} "
                f"{compile_s:9.3f} {seconds:9.4f}  {'yes' if ok else 'NO'} {error}",
                flush=True,
            )
    print(
        f"\n{kind} ({dtype}): solved / {len(names)}, median post-compile time "
        "and median compile time over all problems"
    )
    for sname, rows in table.items():
        solved = sum(ok for ok, _, _ in rows.values())
        median = np.nanmedian([t for _, t, _ in rows.values()] or [np.nan])
        compile_median = np.nanmedian([c for _, _, c in rows.values()] or [np.nan])
        print(
            f"  {sname:26s} {solved:3d}   {median * 1e3:9.2f} ms   "
            f"{compile_median:7.2f} s"
        )
    return table


def all_problems(kind, limit=100):
    """Every sif2jax problem with at most `limit` variables and constraints, of
    the kind (equality-only for "equality", with inequalities or bounds for
    "inequality")."""
    import sif2jax

    names = []
    for source in (
        list(sif2jax.constrained_minimisation_problems)
        + list(sif2jax.constrained_quadratic_problems)
        + list(sif2jax.nonlinear_equations_problems)
    ):
        try:
            p = cutest.load(source.name)
        except Exception:
            continue
        n, m_eq, m_ineq, n_bounds = p.sizes
        if n > limit or m_eq + m_ineq > limit:
            continue
        equality = m_ineq == 0 and n_bounds == 0 and m_eq > 0
        if equality == (kind == "equality"):
            names.append(source.name)
    return sorted(set(names))


def performance_profile(tables, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4))
    axes = np.atleast_1d(axes)
    for ax, (kind, table) in zip(axes, tables.items(), strict=True):
        names = list(table)
        problems = list(next(iter(table.values())))
        times = np.array(
            [
                [t if ok else np.inf for ok, t, _ in (table[s][p] for p in problems)]
                for s in names
            ]
        )
        best = np.min(times, axis=0)
        ratios = times / np.where(np.isfinite(best), best, np.inf)
        taus = np.logspace(0, 4, 200)
        for s, r in zip(names, ratios, strict=True):
            ax.step(taus, [(r <= tau).mean() for tau in taus], where="post", label=s)
        ax.set_xscale("log")
        ax.set_xlabel("τ (time / best time)")
        ax.set_ylabel("fraction solved within τ")
        ax.set_title(f"CUTEst, {kind} set")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nperformance profile saved to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", default="both", choices=["equality", "inequality", "both"]
    )
    parser.add_argument("--out", default="outputs")
    parser.add_argument("--problems", default=None, help="comma-separated subset")
    parser.add_argument("--all", action="store_true", help="every sif2jax problem")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--solvers", default=None, help="comma-separated substrings")
    a = parser.parse_args()
    kinds = ["equality", "inequality"] if a.set == "both" else [a.set]
    only = a.solvers.split(",") if a.solvers else None
    tables = {}
    for kind in kinds:
        names = EQUALITY if kind == "equality" else INEQUALITY
        if a.all:
            names = all_problems(kind)
        if a.problems:
            names = [n for n in a.problems.split(",") if n in names]
        tables[kind] = run_set(kind, names, a.dtype, a.timeout, only)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"cutest_profile_{a.dtype}.png")
    performance_profile(tables, path)


if __name__ == "__main__":
    main()
