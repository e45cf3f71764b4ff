"""bilevax: differentiable optimization and bilevel learning in JAX.

Subpackages:

- `bilevax.implicit`: implicit differentiation of any solver from its optimality
  condition (root or fixed point), with matrix-free lineax linear solves.
- `bilevax.solvers`: constrained solvers whose solutions are differentiable.
- `bilevax.bilevel`: bilevel problems and algorithms.
- `bilevax.datasets`: loaders for the examples and benchmarks.
- `bilevax.prox`: proximal operators and projections (`prox(v, θ, η)`).
- `bilevax.sklearn`: scikit-learn-style estimators whose regularisation is tuned
  by hypergradients (`LassoHO`, `ElasticNetHO`).

And `save`/`load` for results and states (no template needed), `statuses` and
`status_counts` for the statuses of a batch of runs.
"""

from . import (
    bilevel as bilevel,
    datasets as datasets,
    implicit as implicit,
    prox as prox,
    sklearn as sklearn,
    solvers as solvers,
)
from ._display import status_counts as status_counts, statuses as statuses
from ._save import load as load, save as save

__version__ = "0.1.0"

__all__ = [
    "bilevel",
    "datasets",
    "implicit",
    "load",
    "prox",
    "save",
    "sklearn",
    "solvers",
    "status_counts",
    "statuses",
]
