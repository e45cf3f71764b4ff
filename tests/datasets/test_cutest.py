"""`bilevax.datasets.cutest` (sif2jax problems as `ConstrainedProblem`s) and
`SketchedNewton` on a fast subset of the Hong et al. CUTEst test set (all 24 run in
`benchmarks/cutest.py`)."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest

import bilevax as bx
from bilevax.datasets import cutest

# sif2jax 0.0.8 takes one to two minutes to import (it builds CLEUVEN7's data):
# the check does not import it, and `cutest.load` imports one problem at a time
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sif2jax") is None, reason="needs sif2jax"
)

S = bx.solvers


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def test_load_converts_the_conventions():
    p = cutest.load("HS21")  # 10 y1 - y2 >= 10, 2 <= y1 <= 50, -50 <= y2 <= 50
    assert p.sizes == (2, 0, 1, 4)
    assert p.problem.eq is None and p.problem.bounds is not None
    feasible = jnp.array([2.0, 0.0])
    assert float(p.problem.ineq(feasible, p.args)[0]) < 0  # bilevax: h <= 0
    assert float(p.problem.ineq(jnp.array([1.0, 5.0]), p.args)[0]) > 0
    assert p.expected_objective == pytest.approx(-99.96)
    # HS76's first two rows come from sif2jax in the `<= 0` form: kept as they are
    hs76 = cutest.load("HS76")
    assert jnp.all(hs76.problem.ineq(jnp.array([0.0, 0.5, 0.5, 0.0]), None) <= 0)


def test_load_imports_one_problem_at_a_time():
    import sys

    cutest.load("HS40")
    assert "sif2jax.cutest" not in sys.modules  # sif2jax's own import is not run


def test_load_errors(monkeypatch):
    with pytest.raises(ValueError, match="unconstrained"):
        cutest.load("ROSENBR")

    # a name no sif2jax file mentions is refused at once, with close names
    with pytest.raises(KeyError, match="'HS7l'. Close names: HS7"):
        cutest.load("HS7l")
    with pytest.raises(KeyError, match="'hs71'. Close names: HS71"):
        cutest.load("hs71")
    with pytest.raises(KeyError, match="called 'HS'"):  # no HS class: not imported
        cutest.load("HS")
    with pytest.raises(TypeError, match="`name` must be a str"):
        cutest.load(71)

    # a name that some file quotes but no class defines falls back to sif2jax's own
    # lookup (stubbed: the real one imports every problem)
    class Stub:
        get_problem = staticmethod(lambda name: None)

    monkeypatch.setattr(cutest, "_sif2jax", lambda: Stub)
    with pytest.raises(KeyError, match="no CUTEst problem"):
        cutest.load("10FOLDTR")  # sif2jax's name of its class TENFOLDTR


FAST = ["HS6", "HS28", "HS40", "HS78", "BT10", "HIMMELBC", "BOOTH", "TRIGON1NE"]


@pytest.mark.parametrize("name", FAST)
def test_sketched_newton_on_cutest(name):
    p = cutest.load(name)
    solver = S.SketchedNewton(linear_solver=S.GaussianSketch(max_steps=100_000))
    sol = jax.jit(lambda y0: S.minimize(p.problem, y0, p.args, solver))(p.y0)
    assert sol.result == S.RESULTS.successful
    assert float(sol.stats["kkt_residual"]) <= 1e-4
    if p.expected_objective is not None:
        value = float(p.problem.objective(sol.y, p.args))
        assert abs(value - p.expected_objective) <= 1e-3 * max(1, abs(value))


@pytest.mark.parametrize("name", ["HS6", "HS40", "BT10"])
def test_sketched_newton_bfgs(name):
    p = cutest.load(name)
    solver = S.SketchedNewton(hessian="bfgs", linear_solver=S.GaussianSketch())
    sol = jax.jit(lambda y0: S.minimize(p.problem, y0, p.args, solver))(p.y0)
    assert sol.result == S.RESULTS.successful
    with pytest.raises(ValueError, match="hessian"):
        S.SketchedNewton(hessian="newton")
