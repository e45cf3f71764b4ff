"""Bilevel problems and algorithms.

- `BilevelProblem(outer, inner)`: `min_x f(x, y*(x))`, `y*(x) = argmin_y g(x, y)`,
  with `f(x, y, batch)`, `g(x, y, batch)`; data `(inner_data, outer_data)`.
- `hypergradient`: `dF/dx` by the implicit function theorem (CG, Neumann, GMRES,
  ...) or by back-propagation through the inner solver (unrolled, truncated).
- Algorithms, each with `init`/`step`/`run` returning a `BilevelResult`:
  `HypergradientDescent`, `HOAG`, `F2SA`, `PenaltyMethod`.
- Inner solvers: `GradientDescent`, `LBFGS`.
- `sample_batch`: minibatches drawn inside `jit`.
"""

from ._hypergradient import (
    HypergradientStats as HypergradientStats,
    hypergradient as hypergradient,
)
from ._hypergradient_descent import (
    HOAG as HOAG,
    HypergradientDescent as HypergradientDescent,
)
from ._inner import (
    LBFGS as LBFGS,
    AbstractInnerSolver as AbstractInnerSolver,
    GradientDescent as GradientDescent,
)
from ._penalty import F2SA as F2SA, PenaltyMethod as PenaltyMethod
from ._problem import (
    BilevelData as BilevelData,
    BilevelProblem as BilevelProblem,
    sample_batch as sample_batch,
)
from ._run import (
    RESULTS as RESULTS,
    AbstractBilevelAlgorithm as AbstractBilevelAlgorithm,
    BilevelResult as BilevelResult,
    History as History,
    StepInfo as StepInfo,
)

__all__ = [
    "F2SA",
    "HOAG",
    "LBFGS",
    "RESULTS",
    "AbstractBilevelAlgorithm",
    "AbstractInnerSolver",
    "BilevelData",
    "BilevelProblem",
    "BilevelResult",
    "GradientDescent",
    "History",
    "HypergradientDescent",
    "HypergradientStats",
    "PenaltyMethod",
    "StepInfo",
    "hypergradient",
    "sample_batch",
]
