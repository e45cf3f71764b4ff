"""Constrained solvers whose solutions are differentiable through their KKT
conditions.

- `ConstrainedProblem`, `minimize`, `ConstrainedSolution`, `RESULTS`.
- `AugmentedLagrangian`: the safeguarded augmented-Lagrangian method (PHR,
  ALGENCAN-style updates) for equality, inequality and bound constraints.
- `project_polyhedron`: exact Euclidean projection onto a polyhedron (box,
  affine equalities and inequalities) by a dual semismooth Newton method.
- `SketchedNewton`: sketched inexact Newton-SQP on the exact augmented Lagrangian
  (Hong, Na, Mahoney, Kolar 2023), for equality constraints.
- `sketch`: randomized sketching linear solvers (`RandomizedKaczmarz`,
  `SketchAndProject`, `GaussianSketch`) as lineax solvers.
"""

from . import sketch as sketch
from ._augmented_lagrangian import AugmentedLagrangian as AugmentedLagrangian
from ._base import AbstractConstrainedSolver as AbstractConstrainedSolver
from ._minimize import minimize as minimize
from ._polyhedral import (
    PolyhedralProjection as PolyhedralProjection,
    project_polyhedron as project_polyhedron,
)
from ._problem import (
    RESULTS as RESULTS,
    ConstrainedProblem as ConstrainedProblem,
    ConstrainedSolution as ConstrainedSolution,
)
from ._sketched_newton import SketchedNewton as SketchedNewton
from .sketch import (
    GaussianSketch as GaussianSketch,
    RandomizedKaczmarz as RandomizedKaczmarz,
    SketchAndProject as SketchAndProject,
)

__all__ = [
    "RESULTS",
    "AbstractConstrainedSolver",
    "AugmentedLagrangian",
    "ConstrainedProblem",
    "ConstrainedSolution",
    "GaussianSketch",
    "PolyhedralProjection",
    "RandomizedKaczmarz",
    "SketchAndProject",
    "SketchedNewton",
    "minimize",
    "project_polyhedron",
    "sketch",
]
