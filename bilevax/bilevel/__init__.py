"""Bilevel problems and algorithms (hypergradient descent, F2SA, penalty methods,
LV-HBA, dataset distillation). Nothing is exported yet: the building block today is
`bilevax.implicit`; see the project issues for the roadmap."""

__all__: list[str] = []
