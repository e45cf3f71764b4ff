"""Constrained solvers whose solutions are differentiable through their KKT
conditions (sketched inexact Newton, augmented Lagrangian, randomized sketching
linear solvers). Nothing is exported yet: see the project issues for the roadmap."""

__all__: list[str] = []
