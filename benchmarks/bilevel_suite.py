"""Bilevel problem suite: every algorithm with its defaults on problems with exact
solutions (problem definitions in tests/bilevel/_suite.py).

For each problem and algorithm (defaults only, float64): the relative
suboptimality `(h(x) - h*) / (h(x0) - h*)` of the exact `h(x) = f(x, y*(x))` after
`--steps` outer steps, the steps and wall time (compile apart) to reach `1e-3`,
and the status; then a success table (`1e-3` reached with a successful status).
Unconstrained problems run HypergradientDescent, HOAG, F2SA and PenaltyMethod;
the constrained ones LVHBA. `--stochastic` instead runs F2SA and PenaltyMethod
with minibatches (16, 64, 256) on the finite-sum problems (two seeds each) and
reports the final relative suboptimality.

Run: python benchmarks/bilevel_suite.py [--steps 5000] [--record 50] [--fast]
     [--only NAME,...] [--stochastic]
"""

import argparse
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import bilevax as bx  # noqa: E402
from tests.bilevel import _suite  # noqa: E402

B = bx.bilevel
TARGET = 1e-3


def algorithms(problem):
    if problem.kind == "constrained":
        return {"LVHBA": B.LVHBA(**problem.lvhba)}
    return {
        "HypergradientDescent": B.HypergradientDescent(),
        "HOAG": B.HOAG(),
        "F2SA": B.F2SA(),
        "PenaltyMethod": B.PenaltyMethod(),
    }


def trajectory(algorithm, p, steps, record, key=None):
    """Records of `(step, seconds, rel. suboptimality)` every `record` steps (the
    clock stops while `h` is evaluated), and the final status."""
    key = jax.random.key(0) if key is None else key
    data = B.BilevelData() if p.data is None else B.BilevelData(*p.data)
    init = jax.jit(lambda: algorithm.init(p.problem, p.x0, p.y0, data, key))

    def chunk(state, total):
        prev = B.BilevelResult(None, None, state, None, None, None, total)
        return algorithm.run(
            p.problem,
            p.x0,
            p.y0,
            data,
            key=key,
            num_steps=record,
            state=prev,
            throw=False,  # the final status is returned
        )

    chunk = jax.jit(chunk)
    jax.block_until_ready(chunk(init(), jax.numpy.array(0)))  # compile
    rel = jax.jit(p.h)
    h0 = float(rel(p.x0))
    score = lambda x: (float(rel(x)) - p.h_star) / (h0 - p.h_star)
    start = time.perf_counter()
    state, total, elapsed, records = jax.block_until_ready(init()), 0, 0.0, []
    elapsed += time.perf_counter() - start
    result = None
    while total < steps:
        start = time.perf_counter()
        result = jax.block_until_ready(chunk(state, jax.numpy.array(total)))
        elapsed += time.perf_counter() - start
        state, total = result.state, int(result.total_steps)
        records.append((total, elapsed, score(result.x)))
        if result.result != B.RESULTS.successful:
            break
    return records, result.result


def first_below(records, target=TARGET):
    return next(((k, t) for k, t, r in records if r <= target), None)


def deterministic(problems, steps, record):
    rows, success = [], {}
    print(
        f"{'problem':28s} {'algorithm':22s} {'final rel':>10s} {'to 1e-3':>16s}  status"
    )
    for p in problems:
        for name, algorithm in algorithms(p).items():
            records, status = trajectory(algorithm, p, steps, record)
            hit = first_below(records)
            ok = hit is not None and status == B.RESULTS.successful
            success[p.name, name] = ok
            reach = "-" if hit is None else f"{hit[0]} / {hit[1]:.2f} s"
            status_name = "successful" if status == B.RESULTS.successful else "FAILED"
            rows.append((p.name, name, records[-1][2], reach, status_name))
            print(
                f"{p.name:28s} {name:22s} {records[-1][2]:10.1e} {reach:>16s}  "
                f"{status_name}",
                flush=True,
            )
    return rows, success


def success_table(problems, success):
    names = ["HypergradientDescent", "HOAG", "F2SA", "PenaltyMethod", "LVHBA"]
    print("\n| problem | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for p in problems:
        cells = [
            ""
            if (p.name, n) not in success
            else ("yes" if success[p.name, n] else "NO")
            for n in names
        ]
        print(f"| {p.name} | " + " | ".join(cells) + " |")
    total = len(success)
    print(
        f"\n{sum(success.values())}/{total} runs reach {TARGET:g} with a successful "
        "status."
    )


def stochastic(problems, steps, record):
    print(
        f"{'problem':28s} {'algorithm':16s} "
        + " ".join(f"{'batch ' + str(b):>10s}" for b in (16, 64, 256))
    )
    for p in (p for p in problems if p.finite_sum):
        for name, cls in (("F2SA", B.F2SA), ("PenaltyMethod", B.PenaltyMethod)):
            cells = []
            for b in (16, 64, 256):
                finals = []
                for seed in (0, 1):
                    records, status = trajectory(
                        cls(batch_size=b), p, steps, record, jax.random.key(seed)
                    )
                    bad = status != B.RESULTS.successful
                    finals.append(float("inf") if bad else records[-1][2])
                cells.append(f"{sum(finals) / 2:10.1e}")
            print(f"{p.name:28s} {name:16s} " + " ".join(cells), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--record", type=int, default=50)
    parser.add_argument("--fast", action="store_true", help="the tests' subset")
    parser.add_argument("--only", default=None, help="comma-separated names")
    parser.add_argument("--stochastic", action="store_true")
    args = parser.parse_args()
    problems = _suite.fast_problems() if args.fast else _suite.all_problems()
    if args.only:
        problems = [p for p in problems if p.name in args.only.split(",")]
    if args.stochastic:
        stochastic(problems, args.steps, args.record)
        return
    _, success = deterministic(problems, args.steps, args.record)
    success_table(problems, success)


if __name__ == "__main__":
    main()
