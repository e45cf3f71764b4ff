"""Every failure status that a solve can produce is reached by a test (issue 18).

`TABLE` maps each failure member of every status enumeration that bilevax's
results carry (its own `RESULTS` enumerations and the `lineax.RESULTS` of the
adjoint linear solves, surfaced in `ImplicitStats`, `SupportStats` and
`HypergradientStats`) to a small problem that produces it: either a case here,
which asserts the status with `throw=False` and, where the entry point has a
`throw`, that `throw=True` raises with the status's name in the message; or the
test elsewhere that does the same (`Elsewhere`). `test_the_table_covers_every_status`
finds the enumerations by walking the package, so that a new status (or a new
enumeration) without a test here fails.
"""

import ast
import dataclasses
import importlib
import pathlib
import pkgutil
from collections.abc import Callable

import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import lineax as lx
import pytest

import bilevax
import bilevax.bilevel as B
import bilevax.solvers as S
from bilevax.implicit import CG, root_vjp

ROOT = pathlib.Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class Here:
    """A case in this file: `produce()` returns the status of a failed solve run
    with `throw=False`; `throwing()` runs the same solve with `throw=True`."""

    problem: str
    produce: Callable[[], object]
    throwing: Callable[[], object]


@dataclasses.dataclass(frozen=True)
class Elsewhere:
    """A test elsewhere (`path::name`) that produces the status and asserts it;
    `raises`: whether it also checks that `throw=True` raises with the name, else
    `why_not` says why there is nothing to raise."""

    problem: str
    test: str
    raises: bool = True
    why_not: str = ""


# ---------------------------------------------------------------- lineax.RESULTS
# The adjoint solve of `root_vjp` on `F(y, b) = A y - b` (∂F/∂y = A).


def _adjoint(A, solver, cotangent=None, throw=False):
    A = jnp.asarray(A)
    n = A.shape[0]
    u = jnp.ones(n) if cotangent is None else cotangent
    F = lambda y, b: A @ y - b
    out, stats = root_vjp(
        F, jnp.zeros(n), (jnp.ones(n),), u, linear_solver=solver, throw=throw
    )
    return jax.block_until_ready(out) if throw else stats.result


def _lineax_case(problem, A, solver, cotangent=None):
    return Here(
        problem,
        lambda: _adjoint(A, solver, cotangent),
        lambda: _adjoint(A, solver, cotangent, throw=True),
    )


ROTATION = [[0.0, 1.0], [-1.0, 0.0]]
LINEAX = {
    "max_steps_reached": _lineax_case(
        "CG with max_steps=1 on diag(1, 4, 10)",
        jnp.diag(jnp.array([1.0, 4.0, 10.0])),
        CG(rtol=1e-12, max_steps=1),
    ),
    "singular": _lineax_case(
        "LU on the singular [[1, 1], [1, 1]]", [[1.0, 1.0], [1.0, 1.0]], lx.LU()
    ),
    "breakdown": _lineax_case(
        "CG on the indefinite diag(1, -4, 2) (pᵀAp < 0)",
        jnp.diag(jnp.array([1.0, -4.0, 2.0])),
        CG(rtol=1e-10),
    ),
    "stagnation": _lineax_case(
        "GMRES(restart=1) on a rotation: Ar ⟂ r, no progress",
        ROTATION,
        lx.GMRES(rtol=1e-10, atol=1e-10, restart=1, stagnation_iters=2),
        jnp.array([1.0, 0.0]),
    ),
    "conlim": _lineax_case(
        "LSMR(conlim=1e3) on diag(1, 1e-8)",
        [[1.0, 0.0], [0.0, 1e-8]],
        lx.LSMR(rtol=1e-10, atol=1e-10, conlim=1e3),
    ),
    "nonfinite_input": _lineax_case(
        "a NaN in the cotangent",
        [[1.0, 0.0], [0.0, 2.0]],
        lx.LU(),
        jnp.array([jnp.nan, 1.0]),
    ),
}


# -------------------------------------------------------------- solvers.RESULTS


def _minimize(problem, y0, solver, throw):
    solution = S.minimize(problem, y0, None, solver, throw=throw)
    return jax.block_until_ready(solution.y) if throw else solution.result


_NAN = S.ConstrainedProblem(  # log of a negative start: NaN objective
    lambda y, a: jnp.sum(jnp.log(y)), ineq=lambda y, a: jnp.array([1.0 - jnp.sum(y)])
)
_STIFF = S.ConstrainedProblem(
    lambda y, a: jnp.sum(jnp.exp(y) + y**4), eq=lambda y, a: jnp.array([y @ y - 1.0])
)
_ONE_STEP = S.AugmentedLagrangian(max_steps=1, inner_max_steps=1)

SOLVERS = {  # the two cases here compile `minimize` twice each: slow
    "max_steps_reached": Here(
        "AugmentedLagrangian(max_steps=1) on a nonlinear equality constraint",
        lambda: _minimize(_STIFF, jnp.zeros(2), _ONE_STEP, False),
        lambda: _minimize(_STIFF, jnp.zeros(2), _ONE_STEP, True),
    ),
    "nonfinite": Here(
        "Σ log y from y0 = (-1, 2)",
        lambda: _minimize(_NAN, jnp.array([-1.0, 2.0]), S.AugmentedLagrangian(), False),
        lambda: _minimize(_NAN, jnp.array([-1.0, 2.0]), S.AugmentedLagrangian(), True),
    ),
    "infeasible": Elsewhere(
        "y0 + y1 = 1 and y0 + y1 <= 0",
        "solvers/test_augmented_lagrangian.py::test_infeasible_problem_is_reported",
    ),
    "singular": Elsewhere(
        "SketchedNewton on the inconsistent y0 + y1 = 1, y0 + y1 = 2",
        "solvers/test_sketched_newton.py::"
        "test_redundant_constraints_are_solved_inconsistent_ones_singular",
    ),
}

# -------------------------------------------------------------- bilevel.RESULTS
_NO_THROW = "`run` returns its status (the last finite iterate kept); it has no throw"

BILEVEL = {
    "diverged": Elsewhere(
        "HypergradientDescent / PenaltyMethod / F2SA with a step of 1e3",
        "bilevel/test_errors.py::test_divergence_is_reported_not_returned",
        raises=False,
        why_not=_NO_THROW,
    ),
    "inner_failed": Elsewhere(
        "ConstrainedInner with y <= x, y >= 1, from x = 3 (infeasible below x = 1)",
        "bilevel/test_hypergradient.py::test_kkt_route_reports_an_infeasible_lower_level",
        raises=False,
        why_not=_NO_THROW + " (`hypergradient` raises on it: see its own tests)",
    ),
}

TABLE = {lx.RESULTS: LINEAX, S.RESULTS: SOLVERS, B.RESULTS: BILEVEL}
HERE = [
    pytest.param(
        enum,
        name,
        id=f"{enum.__module__.split('.')[0]}-{name}",
        marks=[pytest.mark.slow] if enum is S.RESULTS else [],
    )
    for enum, cases in TABLE.items()
    for name, case in cases.items()
    if isinstance(case, Here)
]


@pytest.mark.parametrize("enum, name", HERE)
def test_status_is_produced_and_raised_by_name(enum, name):
    case = TABLE[enum][name]
    assert case.produce() == getattr(enum, name)
    with pytest.raises(Exception, match=rf"RESULTS\.{name}\b"):
        case.throwing()


def _test_source(reference: str) -> str:
    path, name = reference.split("::")
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return ast.get_source_segment((ROOT / path).read_text(), node)
    raise AssertionError(f"{reference} does not exist")


@pytest.mark.parametrize(
    "enum, name",
    [
        (enum, name)
        for enum, cases in TABLE.items()
        for name, case in cases.items()
        if isinstance(case, Elsewhere)
    ],
)
def test_the_tests_elsewhere_assert_the_status(enum, name):
    case = TABLE[enum][name]
    source = _test_source(case.test)
    assert f"RESULTS.{name}" in source
    if case.raises:
        assert f'match="RESULTS.{name}"' in source
    else:
        assert case.why_not


def _status_enumerations() -> set[type]:
    """Every `Enumeration` defined in bilevax, or the type of a field of one of its
    modules' classes (as `lineax.RESULTS` is of `ImplicitStats.result`)."""
    found = set()
    for info in pkgutil.walk_packages(bilevax.__path__, "bilevax."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if not isinstance(obj, type) or not obj.__module__.startswith("bilevax"):
                continue
            if obj.__module__ == "bilevax._display":  # `_Probe`: not a status
                continue
            if issubclass(obj, eqxi.Enumeration):
                found.add(obj)
            for hint in getattr(obj, "__annotations__", {}).values():
                if isinstance(hint, type) and issubclass(hint, eqxi.Enumeration):
                    found.add(hint)
    return found


def test_the_table_covers_every_status():
    enumerations = _status_enumerations()
    assert {lx.RESULTS, S.RESULTS, B.RESULTS} <= enumerations
    assert enumerations <= set(TABLE), "a status enumeration without a table"
    for enum in enumerations:
        failures = set(enum._name_to_item) - {"successful"}
        assert set(TABLE[enum]) == failures, enum
