"""Bilevel problems and algorithms.

- `BilevelProblem(outer, inner)`: `min_x f(x, y*(x))`, `y*(x) = argmin_y g(x, y)`,
  with `f(x, y, batch)`, `g(x, y, batch)`; data `(inner_data, outer_data)`.
- `hypergradient`: `dF/dx` by the implicit function theorem (CG, Neumann, GMRES,
  ...) or by back-propagation through the inner solver (unrolled, truncated).
- Algorithms, each with `init`/`step`/`run` returning a `BilevelResult`:
  `HypergradientDescent`, `HOAG`, `F2SA`, `PenaltyMethod`, and `LVHBA` for
  lower levels with constraints `inner_constraints(x, y) <= 0`.
- `DatasetDistillation` (KIP, RCIG-style): learn a small synthetic training set,
  with a `KernelRidge` (closed form) or `LinearizedNetwork` (implicit) inner model;
  `kernels`: RBF, NNGP and NTK kernels.
- `sets`: convex sets by their projections (`Box`, `Ball`, `Simplex`, ...).
- Inner solvers: `GradientDescent`, `LBFGS`, `ProximalGradient` (FISTA, for
  Lasso-type lower levels stated as smooth part + prox), and `ConstrainedInner` (a
  `bilevax.solvers` solve, differentiated through its KKT conditions).
- `sample_batch`: minibatches drawn inside `jit`; `plot_history`: loss and
  hypergradient-norm curves of runs; `shard_data`: data-parallel placement over
  devices and hosts (`jax.sharding`).
"""

from . import kernels as kernels, sets as sets
from ._bo_rep import BOREP as BOREP
from ._bome import BOME as BOME
from ._distillation import (
    DatasetDistillation as DatasetDistillation,
    KernelRidge as KernelRidge,
    LinearizedNetwork as LinearizedNetwork,
)
from ._hypergradient import (
    ConstrainedInner as ConstrainedInner,
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
from ._lvhba import (
    LVHBA as LVHBA,
    affine_projection as affine_projection,
    coupled_projection as coupled_projection,
)
from ._ma_soba import MASOBA as MASOBA
from ._maid import MAID as MAID
from ._penalty import F2SA as F2SA, PenaltyMethod as PenaltyMethod
from ._plot import plot_history as plot_history
from ._problem import (
    BilevelData as BilevelData,
    BilevelProblem as BilevelProblem,
    sample_batch as sample_batch,
)
from ._proximal import ProximalGradient as ProximalGradient
from ._run import (
    RESULTS as RESULTS,
    AbstractBilevelAlgorithm as AbstractBilevelAlgorithm,
    BilevelResult as BilevelResult,
    History as History,
    StepInfo as StepInfo,
)
from ._saba import SABA as SABA
from ._sharding import shard_data as shard_data
from ._soba import SOBA as SOBA

__all__ = [
    "BOME",
    "BOREP",
    "F2SA",
    "HOAG",
    "LBFGS",
    "LVHBA",
    "MAID",
    "MASOBA",
    "RESULTS",
    "SABA",
    "SOBA",
    "AbstractBilevelAlgorithm",
    "AbstractInnerSolver",
    "BilevelData",
    "BilevelProblem",
    "BilevelResult",
    "ConstrainedInner",
    "DatasetDistillation",
    "GradientDescent",
    "History",
    "HypergradientDescent",
    "HypergradientStats",
    "KernelRidge",
    "LinearizedNetwork",
    "PenaltyMethod",
    "ProximalGradient",
    "StepInfo",
    "affine_projection",
    "coupled_projection",
    "hypergradient",
    "kernels",
    "plot_history",
    "sample_batch",
    "sets",
    "shard_data",
]
