"""The interface every constrained solver implements (the optimistix pattern:
`init`, `step`, `terminate`, `postprocess`), driven by one loop, `iterate`."""

import abc
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._problem import RESULTS

_Problem = TypeVar("_Problem")
_State = TypeVar("_State")


class AbstractConstrainedSolver(eqx.Module, Generic[_Problem, _State]):
    """The base class of the constrained solvers: `minimize` accepts any subclass
    and runs it with one driver (`init`, then `step` while `terminate` says not
    done and fewer than `max_steps` steps were taken, then `postprocess`).

    Subclasses set `max_steps` (an `int` field) and implement, all traceable:

    - `init(problem, y, key) -> state`: `problem` the flat problem (for `minimize`
      a `FlatProblem`: `f`, `c`, `h` on flat `y`, `lower`, `upper`, sizes `m`,
      `p`), `y` the flat `(n,)` start; `state` an `equinox.Module` of arrays.
    - `step(problem, state, key) -> state`: one iteration (`key` differs per step).
    - `terminate(problem, state) -> (done, result)`: whether to stop, and the
      status to report if so (`RESULTS.successful`, `infeasible`, ...); the driver
      reports `RESULTS.max_steps_reached` when `max_steps` ends the loop first.
    - `postprocess(problem, state, result) -> (y, multipliers, stats)`: the flat
      solution, the multipliers (`{"eq": ..., "ineq": ...}`) and a dict of
      statistics; the driver adds `num_steps`.

    Example:

    ```python
    >>> import bilevax as bx
    >>> solvers = [bx.solvers.SketchedNewton(), bx.solvers.AugmentedLagrangian()]
    >>> [isinstance(s, bx.solvers.AbstractConstrainedSolver) for s in solvers]
    [True, True]

    ```
    """

    max_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def init(self, problem: _Problem, y: Array, key: PRNGKeyArray) -> _State:
        """The state at the start `y`."""

    @abc.abstractmethod
    def step(self, problem: _Problem, state: _State, key: PRNGKeyArray) -> _State:
        """One iteration."""

    @abc.abstractmethod
    def terminate(self, problem: _Problem, state: _State) -> tuple[Array, RESULTS]:
        """`(done, result)`: stop now, with this status."""

    @abc.abstractmethod
    def postprocess(
        self, problem: _Problem, state: _State, result: RESULTS
    ) -> tuple[Array, PyTree, dict[str, Any]]:
        """`(y, multipliers, stats)` at the end."""


def iterate(
    solver: AbstractConstrainedSolver, problem, y0: Array, key: PRNGKeyArray
) -> tuple[Array, PyTree, dict[str, Array], RESULTS]:
    """The one loop of the constrained solvers: `(y, multipliers, stats, result)`
    after `solver.step` from `solver.init(problem, y0, key)` until
    `solver.terminate` or `solver.max_steps` (step `k` gets `fold_in(key, k)`)."""

    def running(carry):
        num_steps, state = carry
        done, _ = solver.terminate(problem, state)
        return ~done & (num_steps < solver.max_steps)

    def body(carry):
        num_steps, state = carry
        step_key = jax.random.fold_in(key, num_steps)
        return num_steps + 1, solver.step(problem, state, step_key)

    init = (jnp.array(0), solver.init(problem, y0, key))
    num_steps, state = jax.lax.while_loop(running, body, init)
    done, result = solver.terminate(problem, state)
    result = RESULTS.where(done, result, RESULTS.max_steps_reached)
    y, multipliers, stats = solver.postprocess(problem, state, result)
    return y, multipliers, {"num_steps": num_steps, **stats}, result
