"""Every public name is either covered by the differentiation contract or declared
not to be a differentiable entry point (with the reason), so that a new public
function cannot go untested."""

import bilevax as bx

from ._cases import CASES

# Entry points whose contract is in test_hypergradient.py (one per inner solver and
# adjoint), and the building blocks exercised through the cases' entry points.
_COVERED_ELSEWHERE = {
    "bilevel.hypergradient",
    "bilevel.GradientDescent",
    "bilevel.LBFGS",
    "bilevel.ConstrainedInner",
    "solvers.SketchedNewton",  # minimize's default solver (case minimize-sketched)
    "implicit.conditions",  # the conditions of the custom_root cases
    "implicit.optax_step",  # a step map for iterate (tests/implicit/test_iterate.py)
    "implicit.CG",  # adjoint linear solvers: tests/implicit/test_linear_solvers.py
    "implicit.Neumann",
    # support-restricted adjoint of prox conditions: central finite differences for
    # Lasso, elastic net, group and weighted Lasso in tests/bilevel/test_proximal.py
    "implicit.support_vjp",
    "implicit.SupportAdjoint",
    "bilevel.ProximalGradient",
}

_NOT_DIFFERENTIABLE = {
    # statuses, results, records, configuration and plotting
    "bilevel.RESULTS",
    "solvers.RESULTS",
    "bilevel.BilevelData",
    "bilevel.BilevelProblem",
    "bilevel.BilevelResult",
    "bilevel.History",
    "bilevel.HypergradientStats",
    "bilevel.StepInfo",
    "bilevel.plot_history",
    "bilevel.sample_batch",
    "bilevel.shard_data",
    "bilevel.sets",
    "bilevel.kernels",
    "solvers.ConstrainedProblem",
    "solvers.ConstrainedSolution",
    "solvers.PolyhedralProjection",
    "solvers.sketch",
    "implicit.ImplicitStats",
    "implicit.SupportStats",
    "implicit.default_linear_solver",
    "implicit.default_tolerance",
    "implicit.AbstractIterateAdjoint",
    "bilevel.AbstractInnerSolver",
    "solvers.AbstractConstrainedSolver",
    "bilevel.kernels.AbstractKernel",
    "bilevel.AbstractBilevelAlgorithm",
    # outer-loop algorithms: they use hypergradients, their outputs are iterates
    "bilevel.F2SA",
    "bilevel.HOAG",
    "bilevel.LVHBA",
    "bilevel.HypergradientDescent",
    "bilevel.PenaltyMethod",
    "bilevel.DatasetDistillation",
    "bilevel.LinearizedNetwork",
    "bilevel.SOBA",
    "bilevel.SABA",
    "bilevel.MASOBA",
    "bilevel.BOME",
    "bilevel.MAID",
    "bilevel.BOREP",
    # projections of projected first-order methods (stop-gradient by design)
    "bilevel.affine_projection",
    "bilevel.coupled_projection",
    # randomized linear-system sketches used inside SketchedNewton
    "solvers.GaussianSketch",
    "solvers.RandomizedKaczmarz",
    "solvers.SketchAndProject",
}


def _public():
    names = set()
    for module, prefix in [
        (bx.implicit, "implicit"),
        (bx.bilevel, "bilevel"),
        (bx.solvers, "solvers"),
        (bx.bilevel.kernels, "bilevel.kernels"),
    ]:
        names |= {f"{prefix}.{n}" for n in module.__all__}
    return names


def test_every_public_name_is_classified():
    covered = {case.entry for case in CASES.values()} | _COVERED_ELSEWHERE
    public = _public()
    unclassified = public - covered - _NOT_DIFFERENTIABLE
    assert not unclassified, f"not in the differentiation contract: {unclassified}"
    stale = (covered | _NOT_DIFFERENTIABLE) - public
    assert not stale, f"classified but not public: {stale}"
    assert not covered & _NOT_DIFFERENTIABLE
