"""Bad input at every public entry point: a wrong shape, a wrong pytree structure,
an integer dtype where floats are needed, NaN in the data, and a lower level that
diverges. Each gives a clear `ValueError`/`TypeError` naming the argument before
anything runs, or a failure status (or a runtime error with `throw=True`) after:
never a NaN presented as an answer, never a hang.

`docs/reliability.md` lists the same table for users; `CASES` is its source.
"""

import jax
import jax.numpy as jnp
import lineax as lx
import optax
import pytest

import bilevax as bx

B, S, Im = bx.bilevel, bx.solvers, bx.implicit
NAN = jnp.array([1.0, jnp.nan, 0.0])


# --- small well-posed problems --------------------------------------------------
def _bilevel(inner=None):
    """y*(x) = x, F(x) = ½‖x - 1‖² + mean over the data of ½‖y - d‖²."""
    return B.BilevelProblem(
        outer=lambda x, y, d: 0.5 * jnp.sum((x - 1) ** 2) + 0.5 * jnp.mean(d) * y @ y,
        inner=inner or (lambda x, y, d: 0.5 * jnp.sum((y - x) ** 2) * jnp.mean(d)),
    )


X0, Y0 = jnp.zeros(3), jnp.zeros(3)
DATA = (jnp.ones((8, 3)), jnp.ones((8, 3)))
NAN_DATA = (jnp.ones((8, 3)).at[2, 1].set(jnp.nan), jnp.ones((8, 3)))
UNBOUNDED = _bilevel(inner=lambda x, y, d: -0.5 * jnp.sum(y**2) + jnp.sum(x + 1 - y))
# LV-HBA's lower-level steps are fixed (`beta`, `eta`): too stiff a lower level
# makes them diverge (on UNBOUNDED its single-step tracking drifts too slowly)
STIFF = _bilevel(inner=lambda x, y, d: 500.0 * jnp.sum((y - x - 1) ** 2))

ALGORITHMS = {
    "HypergradientDescent": B.HypergradientDescent(optax.sgd(0.1)),
    "HOAG": B.HOAG(),
    "F2SA": B.F2SA(),
    "PenaltyMethod": B.PenaltyMethod(),
    "LVHBA": B.LVHBA(),
}
# LV-HBA's derived steps follow a stiff lower level (they no longer diverge on it);
# the divergence case pins the fixed steps it used to default to.
LVHBA_FIXED = B.LVHBA(
    alpha=0.008, beta=0.02, eta=0.01, gamma1=10.0, gamma2=10.0, penalty=0.025
)


def _run(name, problem=None, x0=X0, y0=Y0, data=DATA, num_steps=20):
    problem = _bilevel() if problem is None else problem
    algorithm = ALGORITHMS[name]
    if problem is UNBOUNDED and name == "F2SA":
        # F2SA's inner steps decay as (k+1)^(-4/7), so that its z overflows only
        # after thousands of steps; too large an inner step diverges at once
        algorithm = B.F2SA(lr_inner=5.0)
    if problem is STIFF and name == "LVHBA":
        algorithm = LVHBA_FIXED
    return algorithm.run(problem, x0, y0, data, num_steps=num_steps, throw=False)


def _status(result, *bad):
    """The run stopped with one of the statuses `bad` and kept finite iterates."""
    assert any(result.result == b for b in bad), result
    leaves = jax.tree.leaves((result.x, result.y))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves)


# --- the table ----------------------------------------------------------------
# (entry point, bad input, call, expected): `expected` is (exception type, regex)
# or a function checking the returned value.
CASES = []


def case(entry, kind, expected):
    def register(fn):
        CASES.append(pytest.param(fn, expected, id=f"{entry}-{kind}"))
        return fn

    return register


for _name in ALGORITHMS:
    case(_name, "wrong shape", (ValueError, "shapes of x, y and the data"))(
        lambda n=_name: _run(n, y0=jnp.zeros(4))
    )
    case(_name, "wrong pytree", (ValueError, "shapes of x, y and the data"))(
        lambda n=_name: _run(n, y0={"w": Y0})
    )
    case(_name, "integer dtype", (TypeError, "floating-point"))(
        lambda n=_name: _run(n, x0=jnp.zeros(3, int))
    )
    case(_name, "NaN data", lambda r: _status(r, B.RESULTS.diverged))(
        lambda n=_name: _run(n, data=NAN_DATA)
    )
    case(_name, "diverging lower level", lambda r: _status(r, B.RESULTS.diverged))(
        lambda n=_name: _run(
            n, problem=STIFF if n == "LVHBA" else UNBOUNDED, num_steps=300
        )
    )


case("hypergradient", "wrong shape", (ValueError, "shapes of x, y and the data"))(
    lambda: B.hypergradient(_bilevel(), X0, jnp.zeros(4), data=DATA)
)
case("hypergradient", "wrong pytree", (ValueError, "shapes of x, y and the data"))(
    lambda: B.hypergradient(_bilevel(), (X0,), Y0, data=DATA)
)
case("hypergradient", "integer dtype", (TypeError, "floating-point"))(
    lambda: B.hypergradient(_bilevel(), X0, jnp.zeros(3, int), data=DATA)
)
case("hypergradient", "NaN data", (RuntimeError, "non-finite"))(
    lambda: jax.block_until_ready(B.hypergradient(_bilevel(), X0, Y0, data=NAN_DATA))
)
case("hypergradient", "diverging lower level", (RuntimeError, "non-finite"))(
    lambda: jax.block_until_ready(B.hypergradient(UNBOUNDED, X0, Y0, data=DATA))
)

SUPPORT = (jnp.ones((4, 5)), jax.nn.one_hot(jnp.arange(4) % 2, 2))
REAL = (jnp.ones((20, 5)), jax.nn.one_hot(jnp.arange(20) % 2, 2))
DISTILL = B.DatasetDistillation(B.KernelRidge(B.kernels.RBF()), batch_size=10)
case("DatasetDistillation", "wrong shape", (ValueError, "images"))(
    lambda: DISTILL.run(SUPPORT, (jnp.ones((20, 6)), REAL[1]), num_steps=2)
)
case("DatasetDistillation", "wrong pytree", (TypeError, "pair"))(
    lambda: DISTILL.run(SUPPORT[0], REAL, num_steps=2)
)
case("DatasetDistillation", "integer dtype", (TypeError, "float"))(
    lambda: DISTILL.run((SUPPORT[0].astype(int), SUPPORT[1]), REAL, num_steps=2)
)
case("DatasetDistillation", "NaN data", lambda r: _status(r, B.RESULTS.diverged))(
    lambda: DISTILL.run(
        SUPPORT, (REAL[0].at[:, 1].set(jnp.nan), REAL[1]), num_steps=3, throw=False
    )
)


# implicit engine: `custom_root` / `root_vjp` / `root_jvp` / `iterate`
_f = lambda y, a: 0.5 * jnp.sum((y - a) ** 2) + 0.25 * jnp.sum(y**4)
_F = Im.conditions.stationarity(_f)
_solve = Im.custom_root(_F)(lambda init, a: a / 2)  # (not the solution: no matter)
case("custom_root", "wrong shape", (ValueError, r"optimality_fn.*\[2\]"))(
    lambda: Im.custom_root(lambda y, a: y[:2])(lambda init, a: a / 2)(None, NAN * 0)
)
case("custom_root", "wrong pytree", (ValueError, "solution y"))(
    lambda: Im.custom_root(lambda y, a: {"g": y})(lambda init, a: a / 2)(None, X0)
)
case("custom_root", "integer dtype", (TypeError, "floating-point"))(
    lambda: Im.custom_root(_F)(lambda init, a: jnp.arange(3))(None, X0)
)
case("custom_root", "NaN data", (RuntimeError, "non-finite"))(
    lambda: jax.block_until_ready(_solve(None, NAN))
)
case("custom_root", "diverging lower level", (RuntimeError, "non-finite"))(
    lambda: jax.block_until_ready(
        Im.custom_root(_F)(lambda init, a: a / 0.0 - a / 0.0)(None, jnp.ones(3))
    )
)
case("root_vjp", "wrong shape", (ValueError, "cotangent"))(
    lambda: Im.root_vjp(_F, jnp.ones(3), (jnp.ones(3),), jnp.ones(4))
)
case("root_vjp", "wrong pytree", (ValueError, "cotangent"))(
    lambda: Im.root_vjp(_F, jnp.ones(3), (jnp.ones(3),), (jnp.ones(3),))
)
case("root_vjp", "integer dtype", (TypeError, "floating-point"))(
    lambda: Im.root_vjp(_F, jnp.ones(3, int), (jnp.ones(3),), jnp.ones(3))
)
case("root_vjp", "NaN data", lambda out: _stats_failed(out[1]))(
    lambda: Im.root_vjp(_F, NAN, (NAN,), jnp.ones(3), throw=False)
)
case("root_jvp", "wrong shape", (ValueError, "tangent"))(
    lambda: Im.root_jvp(_F, jnp.ones(3), (jnp.ones(3),), (jnp.ones(4),))
)
case("root_jvp", "wrong pytree", (ValueError, "tangent"))(
    lambda: Im.root_jvp(_F, jnp.ones(3), (jnp.ones(3),), jnp.ones(3))
)
case("root_jvp", "integer dtype", (TypeError, "floating-point"))(
    lambda: Im.root_jvp(_F, jnp.ones(3, int), (jnp.ones(3),), (jnp.ones(3),))
)
case("root_jvp", "NaN data", lambda out: _stats_failed(out[1]))(
    lambda: Im.root_jvp(_F, NAN, (NAN,), (jnp.ones(3),), throw=False)
)


def _stats_failed(stats):
    assert stats.result != lx.RESULTS.successful, stats


_step = lambda y, a, t: y - 0.5 * (y - a)
case("iterate", "wrong shape", (ValueError, "step"))(
    lambda: Im.iterate(lambda y, a, t: y[:2], X0, X0, 3)
)
case("iterate", "wrong pytree", (ValueError, "step"))(
    lambda: Im.iterate(lambda y, a, t: {"y": y}, X0, X0, 3)
)
case("iterate", "integer dtype", (ValueError, r"y0: +int\d+\[3\]"))(
    lambda: Im.iterate(_step, jnp.zeros(3, int), X0, 3)
)
case("iterate", "NaN data", (RuntimeError, "non-finite"))(
    lambda: jax.block_until_ready(
        Im.iterate(_step, X0, NAN, 3, adjoint=Im.ImplicitAdjoint(condition=_F))
    )
)

# constrained solvers
_problem = S.ConstrainedProblem(
    lambda y, a: jnp.sum((y - a) ** 2), eq=lambda y, a: jnp.array([jnp.sum(y) - 1.0])
)
case("minimize", "wrong shape", (ValueError, "bounds"))(
    lambda: S.minimize(
        S.ConstrainedProblem(_problem.objective, bounds=(jnp.zeros(4), jnp.ones(4))),
        X0,
        X0,
        S.AugmentedLagrangian(),
    )
)
case("minimize", "wrong pytree", (ValueError, "bounds"))(
    lambda: S.minimize(
        S.ConstrainedProblem(_problem.objective, bounds=jnp.ones(3)),
        X0,
        X0,
        S.AugmentedLagrangian(),
    )
)
case("minimize", "integer dtype", (TypeError, "floating-point"))(
    lambda: S.minimize(_problem, jnp.zeros(3, int), X0)
)
for _solver in (S.SketchedNewton(max_steps=50), S.AugmentedLagrangian()):
    case(
        f"minimize({type(_solver).__name__})",
        "NaN data",
        lambda s: _stats_result(s, S.RESULTS.nonfinite),
    )(lambda s=_solver: S.minimize(_problem, X0, NAN, s, throw=False))
    case(
        f"minimize({type(_solver).__name__})",
        "diverging (unbounded) problem",
        lambda s: _stats_result(s, *FAILURES),
    )(
        lambda s=_solver: S.minimize(
            S.ConstrainedProblem(lambda y, a: -y[0], eq=_problem.eq),
            X0,
            X0,
            s,
            throw=False,
        )
    )


FAILURES = [
    S.RESULTS.max_steps_reached,
    S.RESULTS.nonfinite,
    S.RESULTS.infeasible,
    S.RESULTS.singular,
]


def _stats_result(solution, *bad):
    assert any(solution.result == b for b in bad), solution


case("project_polyhedron", "wrong shape", (ValueError, "bounds"))(
    lambda: S.project_polyhedron(X0, bounds=(jnp.zeros(4), jnp.ones(4)))
)
case("project_polyhedron", "wrong pytree", (TypeError, "target"))(
    lambda: S.project_polyhedron({"v": X0}, bounds=(jnp.zeros(3), jnp.ones(3)))
)
case("project_polyhedron", "integer dtype", (TypeError, "float"))(
    lambda: S.project_polyhedron(jnp.zeros(3, int), bounds=(X0, X0 + 1))
)
case("project_polyhedron", "NaN data", lambda p: _stats_result(p, S.RESULTS.nonfinite))(
    lambda: S.project_polyhedron(NAN, bounds=(X0, X0 + 1), throw=False)
)
case(
    "project_polyhedron",
    "empty set",
    lambda p: _stats_result(p, S.RESULTS.infeasible, S.RESULTS.max_steps_reached),
)(
    lambda: S.project_polyhedron(
        X0,
        ineq=lambda v: jnp.array([1.0 - v[0], v[0]]),
        bounds=(X0 - 5, X0 + 5),
        throw=False,
    )
)

_A = jnp.array([[2.0, 1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
for _sketch in (S.RandomizedKaczmarz(), S.GaussianSketch(2), S.SketchAndProject(2)):
    _name = type(_sketch).__name__
    case(_name, "wrong shape", (ValueError, ""))(
        lambda s=_sketch: lx.linear_solve(lx.MatrixLinearOperator(_A), jnp.ones(4), s)
    )
    case(_name, "NaN data", lambda sol: _linear_failed(sol))(
        lambda s=_sketch: lx.linear_solve(
            lx.MatrixLinearOperator(_A), NAN, s, throw=False
        )
    )


def _linear_failed(solution):
    assert solution.result != lx.RESULTS.successful


case("sample_batch", "wrong shape", (ValueError, "same leading"))(
    lambda: B.sample_batch((jnp.ones((5, 2)), jnp.ones(4)), jax.random.key(0), 2)
)
case("sample_batch", "integer dtype", (TypeError, "batch_size"))(
    lambda: B.sample_batch(jnp.ones((5, 2)), jax.random.key(0), 2.5)
)
case("KernelRidge.fit", "wrong shape", (ValueError, "features"))(
    lambda: B.KernelRidge(B.kernels.NNGP()).predict(
        jnp.ones((3, 4)), jnp.ones((3, 2)), jnp.ones((5, 6))
    )
)
case("kernels", "wrong shape", (ValueError, ""))(
    lambda: B.kernels.NTK()(jnp.ones(4), jnp.ones((2, 4)))
)
case("datasets.breast_cancer", "wrong shape", (ValueError, "sizes"))(
    lambda: bx.datasets.breast_cancer(sizes=(500, 100))
)
case("datasets.fashion_mnist", "missing data", (FileNotFoundError, "apt-get"))(
    lambda: bx.datasets.fashion_mnist(root="/no/such/folder")
)


_T = lambda y, a: 0.5 * (y + a / y)  # fixed point sqrt(a)
_sqrt = Im.custom_fixed_point(_T)(lambda init, a: jnp.sqrt(a))
case("custom_fixed_point", "wrong shape", (ValueError, "fixed-point map"))(
    lambda: Im.custom_fixed_point(lambda y, a: y[:2])(lambda i, a: a)(None, X0 + 1)
)
case("custom_fixed_point", "integer dtype", (TypeError, "floating-point"))(
    lambda: Im.custom_fixed_point(_T)(lambda i, a: jnp.arange(3))(None, X0 + 1)
)
case("custom_fixed_point", "NaN data", (RuntimeError, "non-finite"))(
    lambda: jax.block_until_ready(_sqrt(None, NAN))
)
case("sets.Box", "wrong shape", (ValueError, "Box"))(
    lambda: B.sets.Box(jnp.zeros(2), jnp.ones(2)).project(jnp.ones(3))
)
case("datasets.cutest.load", "unknown problem", (KeyError, "no CUTEst problem"))(
    lambda: bx.datasets.cutest.load("NO_SUCH_PROBLEM")
)


@pytest.mark.parametrize("call, expected", CASES)
def test_bad_input(call, expected):
    if isinstance(expected, tuple):
        error, pattern = expected
        with pytest.raises(error, match=pattern or None):
            call()
    else:
        expected(call())
