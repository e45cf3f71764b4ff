"""Constrained solvers on CUTEst problems from sif2jax.

Two sets, each from the standard starting point, in float64 on the CPU:

- EQUALITY: the 24 equality-constrained and nonlinear-equation problems of the
  Hong, Na, Mahoney & Kolar (2023) test set that sif2jax has. Success: KKT residual
  `‖(∇f + Gᵀλ, c)‖₂ <= 1e-4` (their criterion), measured the same way for every
  solver, with the least-squares multipliers at the returned point.
- INEQUALITY: Hock-Schittkowski problems with inequalities and bounds. Success:
  objective within rel. 1e-6 of the book's value and violation <= 1e-6.

Solvers: bilevax `SketchedNewton` (randomized Kaczmarz and Gaussian sketches;
equality set only) and `AugmentedLagrangian`; the JAX SLSQP of `slsqp-jax`; SciPy
`trust-constr` and `SLSQP` (exact gradients and Jacobians from JAX, jitted). Time
is wall time after compilation (JAX solvers are run once to compile, then timed
with `jax.block_until_ready`; SciPy callbacks are compiled before the clock starts).

Prints one row per problem and solver (iterations, KKT residual or objective
error, objective, expected objective, time), then success counts and median times,
and saves a performance profile (Dolan & Moré) to `{out}/cutest_profile.png`.

Run: python benchmarks/cutest.py [--set equality|inequality|both] [--out outputs]
Needs: pip install sif2jax slsqp-jax scipy matplotlib
"""

import argparse
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


def _timed_jax(run, *xs):
    jax.block_until_ready(run(*xs))  # compile
    start = time.perf_counter()
    out = jax.block_until_ready(run(*xs))
    return out, time.perf_counter() - start


def bilevax_solver(solver):
    def solve(p):
        run = jax.jit(
            lambda y0, args: S.minimize(p.problem, y0, args, solver, throw=False)
        )
        sol, seconds = _timed_jax(run, p.y0, p.args)
        return sol.y, int(sol.stats["num_steps"]), seconds

    return solve


def slsqp_jax_solver(p):
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

    sol, seconds = _timed_jax(jax.jit(run), p.y0, p.args)
    return sol.value, int(sol.stats["num_steps"]), seconds


def scipy_solver(method):
    def solve(p):
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
        out["AugmentedLagrangian"] = bilevax_solver(S.AugmentedLagrangian(tol=1e-6))
    else:
        out["AugmentedLagrangian"] = bilevax_solver(S.AugmentedLagrangian())
    out["slsqp-jax"] = slsqp_jax_solver
    out["scipy trust-constr"] = scipy_solver("trust-constr")
    out["scipy SLSQP"] = scipy_solver("SLSQP")
    return out


JAX_SOLVERS = ("SketchedNewton", "AugmentedLagrangian", "slsqp-jax")


def run_set(kind, names):
    print(f"\n=== {kind} set ({len(names)} problems) ===")
    solvers = solvers_for(kind)
    measure = "kkt" if kind == "equality" else "rel.err"
    print(
        f"{'problem':10s} {'solver':26s} {'iters':>6s} {measure:>9s} "
        f"{'objective':>14s} {'expected':>14s} {'time s':>9s}  ok"
    )
    table = {name: {} for name in solvers}  # solver -> problem -> (ok, seconds)
    for pname in names:
        p = cutest.load(pname)
        expected = BOOK_VALUES.get(pname, p.expected_objective)
        for sname, solve in solvers.items():
            try:
                y, iters, seconds = solve(p)
                value = float(p.problem.objective(y, p.args))
                if kind == "equality":
                    score = _kkt_residual(p.problem, y, p.args)
                    ok = score <= 1e-4
                else:
                    score = abs(value - expected) / max(1.0, abs(expected))
                    ok = score <= 1e-6 and _violation(p.problem, y, p.args) <= 1e-6
            except Exception as e:  # a peer crashing counts as a failure
                iters, score, value, seconds, ok = -1, np.nan, np.nan, np.nan, False
                print(f"{pname:10s} {sname:26s} raised {type(e).__name__}: {e}")
            table[sname][pname] = (ok and np.isfinite(score), seconds)
            shown = "-" if expected is None else f"{expected:.8g}"
            print(
                f"{pname:10s} {sname:26s} {iters:6d} {score:9.1e} {value:14.8g} "
                f"{shown:>14s} {seconds:9.4f}  {'yes' if ok else 'NO'}",
                flush=True,
            )
    print(f"\n{kind}: solved / {len(names)}, median time over all problems")
    for sname, rows in table.items():
        solved = sum(ok for ok, _ in rows.values())
        median = np.nanmedian([t for _, t in rows.values()])
        print(f"  {sname:26s} {solved:3d}   {median * 1e3:9.2f} ms")
    return table


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
                [t if ok else np.inf for ok, t in (table[s][p] for p in problems)]
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
    a = parser.parse_args()
    kinds = ["equality", "inequality"] if a.set == "both" else [a.set]
    tables = {}
    for kind in kinds:
        names = EQUALITY if kind == "equality" else INEQUALITY
        if a.problems:
            names = [n for n in a.problems.split(",") if n in names]
        tables[kind] = run_set(kind, names)
    import os

    os.makedirs(a.out, exist_ok=True)
    performance_profile(tables, os.path.join(a.out, "cutest_profile.png"))


if __name__ == "__main__":
    main()
