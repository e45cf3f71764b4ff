r"""What every bilevel algorithm shares: `init`/`step`/`run`, the history and the
result object.

`run` is one compiled loop (`lax.scan` over records, each a loop of
`record_every` steps), so it runs under `jit` and `jax.vmap` (e.g. over seeds).
Called eagerly it is compiled once per static configuration and shapes
(`equinox.filter_jit`) and reused by later calls. With `progress=True` or a
`callback` the records are driven from Python instead (not inside `jit`/`vmap`),
one compiled chunk at a time; the chunk's length is a value in it, so it compiles
once whatever `num_steps` and `record_every`.

A step that makes `x` or `y` non-finite, or so large that its square overflows
(`|a| >= √max` of the dtype: about 1e154 in float64, 1.8e19 in float32), or whose
hypergradient (direction) is non-finite, is undone and the run stops there with
`result = RESULTS.diverged`: a NaN or an overflowing iterate is never returned as
an answer. The run does not start (`RESULTS.diverged`, no step taken) when the
outer loss or `∇_y g` on the whole data is non-finite at `(x0, y0)` (NaN in the
data or in `x0`/`y0`), and stops likewise when a record finds them non-finite.
A step whose inner solve reports failure (a constrained lower level that is
infeasible at the current `x`; an inner residual `‖∇_y g‖` that is non-finite or
that the inner solve made ten times larger) is undone and the run stops with
`RESULTS.inner_failed`.

A step whose inner solve merely did not reach its tolerance (warm-started
hypergradient descent and HOAG take few inner steps by design; HOAG's tolerance
decreases along the run) is not a failure: such steps are counted in
`BilevelResult.inner_unconverged_steps`.

With `throw=True` (the default) a run that ends with a failure status raises a
runtime error with the status's message; pass `throw=False` to get the result
and its status instead (e.g. for a batch of runs under `jax.vmap`).
"""

import abc
import functools as ft
from collections.abc import Callable
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, PyTree

from .._display import fields_repr, status_name, summarize
from ..implicit._tree import tree_all_bounded, tree_norm
from ._problem import BilevelData, BilevelProblem, as_data, check_problem


class RESULTS(eqxi.Enumeration):
    """Status of a bilevel run.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> diverging = bx.bilevel.HypergradientDescent(optax.sgd(100.0))
    >>> result = diverging.run(problem, x0, y0, num_steps=50, throw=False)
    >>> print(result.result == bx.bilevel.RESULTS.diverged, jnp.isfinite(result.x))
    True [ True  True]

    ```
    """

    successful = ""
    diverged = (
        "The run diverged: a step produced a non-finite x, y or hypergradient (NaN "
        "or infinity) or an iterate beyond the square root of the largest float, or "
        "the losses on the data were non-finite (NaN in the data, x0 or y0). With "
        "`throw=False` the result holds the last iterate before it. Check the data "
        "and x0/y0 for NaN, lower the step sizes, or check that the lower level is "
        "bounded below."
    )
    inner_failed = (
        "The lower-level solve failed (its constraints are infeasible at the current "
        "x, or its residual ‖∇_y g‖ became non-finite or grew): the run stopped "
        "there (with `throw=False` the result holds that x)."
    )


class StepInfo(eqx.Module):
    """What one step knows about itself: the norm of the (estimated) hypergradient
    or direction it used for `x` (recorded in the history; a non-finite one stops
    the run as `diverged`), whether its inner solve failed (stops the run as
    `inner_failed`), and whether its inner solve reached its tolerance (a step
    whose inner solve did not is counted in
    `BilevelResult.inner_unconverged_steps`, not stopped).

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> solver = bx.bilevel.HypergradientDescent(optax.sgd(0.5))
    >>> data = bx.bilevel.BilevelData()
    >>> state = solver.init(problem, x0, y0, data, jax.random.key(0))
    >>> _, info = solver.step(problem, state, data, jax.random.key(1))
    >>> print(info.hypergradient_norm.round(4), info.inner_failed, info.inner_converged)
    1.4142 False True

    ```
    """

    hypergradient_norm: Array
    inner_failed: Array = eqx.field(default_factory=lambda: jnp.array(False))
    inner_converged: Array = eqx.field(default_factory=lambda: jnp.array(True))


class History(eqx.Module):
    """Recorded every `record_every` steps (arrays of length `num_records`).

    - `step`: outer iterations done at the record.
    - `outer_loss`: `f(x, y)` on the whole outer data at the current `(x, y)`.
    - `hypergradient_norm`: norm of the (estimated) hypergradient of the last step.
    - `inner_residual`: the algorithm's lower-level residual on the whole data
      (`AbstractBilevelAlgorithm.inner_residual`); small is good. `‖∇_y g(x, y)‖`,
      0 at an unconstrained inner minimum; for `LVHBA`, whose lower level has
      constraints (at its minimum `∇_y g` is balanced by the multipliers and does
      not vanish), the value-function gap `g(x, y) - v_γ(x, y, z)`, 0 when `y`
      solves the constrained lower level; the repr of a result then calls it
      `value_function_gap`.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.HOAG().run(problem, x0, y0, num_steps=20, record_every=5)
    >>> print(result.history.step, result.history.outer_loss.round(4))
    [ 5 10 15 20] [0.5 0.5 0.5 0.5]

    ```
    """

    step: Array
    outer_loss: Array
    hypergradient_norm: Array
    inner_residual: Array

    def __repr__(self):
        fields = {"records": summarize(self.step)}
        if self.step.ndim == 1 and not isinstance(self.step, jax.core.Tracer):
            fields["last"] = f"step {summarize(self.step[-1])}: " + ", ".join(
                f"{k}={summarize(getattr(self, k)[-1])}"
                for k in ("outer_loss", "hypergradient_norm", "inner_residual")
            )
        return fields_repr("History", fields)


class BilevelResult(eqx.Module):
    """Result of `run`: final `x`, `y`, the algorithm's `state`, the `history`, the
    status `result`, the `num_steps` this run took and the `total_steps` since
    `init` (pass the result as `run(..., state=result)` to continue it), and
    `inner_unconverged_steps`: the steps since `init` whose inner solve stopped
    before its tolerance. Such steps do not fail the run (`result` stays
    `successful`), but their hypergradients are inexact: when there are any, the
    repr (and `print`) shows the count and ends with a warning line saying so (give
    the inner solver more steps or a larger step size). Only algorithms that solve
    the inner problem to a tolerance count them (`HypergradientDescent`, `HOAG`);
    an unrolled or truncated inner solve is differentiated as it ran and is not
    counted.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> result = bx.bilevel.HOAG().run(problem, x0, y0, num_steps=20)
    >>> result
    BilevelResult(result=successful, num_steps=20, outer_loss=0.5,
                  hypergradient_norm=0, inner_residual=..., x=f32[2], y=f32[2])

    ```
    """

    x: PyTree[Array]
    y: PyTree[Array]
    state: PyTree
    history: History
    result: RESULTS
    num_steps: Array
    total_steps: Array
    inner_unconverged_steps: Array = eqx.field(
        default_factory=lambda: jnp.array(0), converter=jnp.asarray
    )

    def __repr__(self):
        fields = {
            "result": status_name(self.result),
            "num_steps": summarize(self.num_steps),
        }
        unconverged = self.inner_unconverged_steps
        if unconverged.ndim or isinstance(unconverged, jax.core.Tracer) or unconverged:
            fields["inner_unconverged_steps"] = summarize(unconverged)
        h = self.history
        if h.step.ndim == 1 and not isinstance(h.step, jax.core.Tracer):
            for k in ("outer_loss", "hypergradient_norm", "inner_residual"):
                # e.g. LV-HBA's state names its residual `value_function_gap`
                label = getattr(self.state, k + "_name", k)
                fields[label] = summarize(getattr(h, k)[-1])
        fields["x"], fields["y"] = summarize(self.x), summarize(self.y)
        return fields_repr("BilevelResult", fields) + self._unconverged_warning()

    def _unconverged_warning(self) -> str:
        """A plain warning line when steps had an unconverged inner solve (one run,
        concrete values); empty otherwise."""
        missed, total = self.inner_unconverged_steps, self.total_steps
        if missed.ndim or isinstance(missed, jax.core.Tracer) or not missed:
            return ""
        return (
            f"\nWarning: at {int(missed)} of the {int(total)} steps since `init` the "
            "inner solve stopped before its tolerance, so those hypergradients are "
            "inexact (`result` is still `successful`: the run did not fail). Give "
            "the inner solver more steps or a larger step size."
        )


def _full_batch_record(algorithm, problem, state, data: BilevelData, info, k):
    x, y = algorithm.iterates(state)
    outer = problem.outer(x, y, data.outer)
    residual = algorithm.inner_residual(problem, state, data)
    return History(k, outer, info.hypergradient_norm, residual)


class AbstractBilevelAlgorithm(eqx.Module):
    """Base of the bilevel algorithms: subclasses define `init`, `step` and
    `iterates`; `run` is shared.

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> solver = bx.bilevel.HypergradientDescent(optax.sgd(0.5))
    >>> isinstance(solver, bx.bilevel.AbstractBilevelAlgorithm)
    True
    >>> data = bx.bilevel.BilevelData()  # no data
    >>> state = solver.init(problem, x0, y0, data, jax.random.key(0))
    >>> state, info = solver.step(problem, state, data, jax.random.key(1))
    >>> print(solver.iterates(state)[0].round(3), info.hypergradient_norm.round(3))
    [0.5 0.5] 1.414

    ```
    """

    @abc.abstractmethod
    def init(self, problem: BilevelProblem, x0, y0, data: BilevelData, key: Array):
        """The initial state."""

    @abc.abstractmethod
    def step(self, problem: BilevelProblem, state, data: BilevelData, key: Array):
        """`(new state, StepInfo)` after one outer iteration."""

    @abc.abstractmethod
    def iterates(self, state) -> tuple[PyTree[Array], PyTree[Array]]:
        """The current `(x, y)` of a state."""

    def inner_residual(self, problem: BilevelProblem, state, data: BilevelData):
        """The lower-level residual recorded in `History.inner_residual`, on the
        whole data: `‖∇_y g(x, y)‖` (0 at an unconstrained inner minimum). An
        algorithm whose lower level has constraints records the residual its
        convergence is judged on instead (`LVHBA`: the value-function gap)."""
        x, y = self.iterates(state)
        return tree_norm(jax.grad(problem.inner, argnums=1)(x, y, data.inner))

    def run(
        self,
        problem: BilevelProblem,
        x0: PyTree[Array],
        y0: PyTree[Array],
        data=None,
        *,
        key: Array | None = None,
        num_steps: int = 1000,
        record_every: int | None = None,
        progress: bool = False,
        callback: Callable[[History, PyTree[Array], PyTree[Array]], Any] | None = None,
        state=None,
        throw: bool = True,
    ) -> BilevelResult:
        """Run `num_steps` outer iterations.

        **Arguments:**

        - `problem`: the `BilevelProblem`.
        - `x0`, `y0`: starting outer and inner variables (pytrees of floats).
        - `data`: `(inner_data, outer_data)`, a `BilevelData` or `None`.
        - `key`: PRNG key for minibatches (default `jax.random.key(0)`).
        - `num_steps`: outer iterations (a Python int).
        - `record_every`: history period (default: about 100 records). `num_steps`
          is rounded up to a multiple of it. Only the number of records
          `⌈num_steps / record_every⌉` is a shape in the compiled program: an
          eager call with the same problem functions, shapes and number of records
          as an earlier one reuses its compiled program.
        - `progress`: show a live tqdm bar with the outer loss and hypergradient
          norm of the latest record.
        - `callback`: `callback(record, x, y)` is called after every
          `record_every` steps with that step's `History` record (scalars) and the
          current iterates, e.g. to log or checkpoint.

          With `progress` or `callback` the loop runs one compiled chunk of
          `record_every` steps at a time from Python, with the same numbers as the
          single compiled loop; it cannot be used inside `jit`/`vmap`.
        - `state`: continue from an earlier `BilevelResult` (or its `state`) instead
          of `init`; `x0`, `y0` are then only used for checks. Given the result, the
          run also continues its step count and key schedule (step `t` since
          `init` draws its batches from `fold_in(split(key)[1], t)`): a run stopped
          after `N` steps and resumed with the same `key` is bit-identical to an
          uninterrupted one, and its `history` holds the whole run so far (the
          earlier records, then the new ones). `bilevax.save(path, result)` and
          `bilevax.load(path)` store a result between processes, with no
          template.
        - `throw`: raise a runtime error when the run ends with a failure status
          (`diverged`: non-finite iterates, hypergradient or losses, e.g. NaN in
          the data, `x0` or `y0`; `inner_failed`). With `throw=False` the result
          is returned with its status, e.g. to count the failures of a batch of
          runs under `jax.vmap`. Steps whose inner solve did not reach its
          tolerance are counted (`inner_unconverged_steps`), never raised on.

        **Returns:** a `BilevelResult`.
        """
        if (
            not isinstance(num_steps, int)
            or isinstance(num_steps, bool)
            or num_steps < 1
        ):
            raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
        record_every = record_every or max(1, num_steps // 100)
        if not isinstance(record_every, int) or record_every < 1:
            raise ValueError(
                f"`record_every` must be a positive int, got {record_every!r}."
            )
        num_records = -(-num_steps // record_every)
        data = as_data(data)
        key = _default_key() if key is None else key
        earlier, start, unconverged = None, None, 0
        if isinstance(state, BilevelResult):
            earlier, start = state.history, state.total_steps
            unconverged, state = state.inner_unconverged_steps, state.state
        args = (self, problem, x0, y0, data, key, state, start)
        chunked = progress or callback is not None
        if chunked:
            result = _run_from_python(
                args, num_records, record_every, progress, callback
            )
        else:  # the `throw` check inside the compiled program
            result = _run_compiled(args, num_records, jnp.asarray(record_every), throw)
        if earlier is not None:
            history = jtu.tree_map(
                lambda a, b: jnp.concatenate([a, b]), earlier, result.history
            )
            result = eqx.tree_at(lambda r: r.history, result, history)
            result = eqx.tree_at(
                lambda r: r.inner_unconverged_steps,
                result,
                result.inner_unconverged_steps + unconverged,
            )
        # a compiled run checked `throw` inside its program
        return _checked(result) if throw and chunked else result


_RUNNING, _DIVERGED, _INNER_FAILED = 0, 1, 2


def _start(algorithm, problem, x0, y0, data, key, state, start):
    """Checks, `init` (unless resumed) and the loop's carry `(state, status code,
    steps done, steps before this run, next step index, unconverged inner steps)`.
    The run does not start when the losses at the starting point are non-finite."""
    check_problem(problem, x0, y0, data, ("x0", "y0"))
    init_key, run_key = jax.random.split(key)
    # strongly typed, so that a chunk's carry out has the types of its carry in
    start = jnp.zeros((), int) if start is None else jnp.asarray(start)
    if state is None:
        state = algorithm.init(problem, x0, y0, data, init_key)
    else:
        _check_state(algorithm, state, problem, x0, y0, data, init_key)
    first = _full_batch_record(
        algorithm, problem, state, data, StepInfo(jnp.zeros(())), start
    )
    return (
        state,
        _record_code(first, jnp.array(_RUNNING, jnp.int32)),
        jnp.zeros_like(start),
        start,
        start,
        jnp.zeros_like(start),
    ), run_key


def _check_state(algorithm, state, problem, x0, y0, data, key):
    """A clear error (at trace time) for a `state` that `algorithm` did not make:
    another algorithm's, or one of other shapes of pytree than `x0`, `y0`."""
    expected = jax.eval_shape(lambda: algorithm.init(problem, x0, y0, data, key))
    name = type(algorithm).__name__
    if type(state) is not type(expected):
        makers = _algorithms_of(type(state), type(algorithm))
        raise TypeError(
            f"`state`: {name}.run continues only a result or state of {name} (a "
            f"`{type(expected).__name__}`), got a `{type(state).__name__}`"
            + (f", the state of {' or '.join(makers)}" if makers else "")
            + f". Continue that run with the algorithm that made it, or start {name} "
            "afresh (no `state`)."
        )
    if jtu.tree_structure(state) != jtu.tree_structure(expected):
        raise TypeError(
            f"`state`: its pytree structure is not the one {name}.init gives for "
            "these `x0`, `y0` and `data` and this configuration (another "
            "configuration of the algorithm, another algorithm with the same kind "
            "of state, or iterates of other pytree structure)."
        )


def _algorithms_of(state_type, exclude) -> list[str]:
    """Names of the concrete algorithms defined with `state_type` (same module)."""
    found, stack = [], list(AbstractBilevelAlgorithm.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        same_module = cls.__module__ == state_type.__module__
        if same_module and cls is not exclude and not cls.__name__.startswith("_"):
            found.append(cls.__name__)
    return sorted(set(found))


def _record_code(record: History, code):
    """`diverged` when a record's full-data outer loss or inner residual is
    non-finite (NaN in the data that the steps did not meet)."""
    finite = jnp.isfinite(record.outer_loss) & jnp.isfinite(record.inner_residual)
    return jnp.where((code == _RUNNING) & ~finite, _DIVERGED, code).astype(jnp.int32)


def _finish(algorithm, carry, history):
    state, failed, done, start, _, unconverged = carry
    x, y = algorithm.iterates(state)
    result = RESULTS.where(
        failed == _DIVERGED,
        RESULTS.diverged,
        RESULTS.where(
            failed == _INNER_FAILED, RESULTS.inner_failed, RESULTS.successful
        ),
    )
    return BilevelResult(x, y, state, history, result, done, start + done, unconverged)


# Compiled once per static configuration and shapes: `num_steps` and `record_every`
# are values in the loop (only the number of records sizes the history), so calling
# `run` again, eagerly, with the same problem functions reuses the compiled program.
@eqx.filter_jit
def _run_compiled(args, num_records, record_every, throw):
    algorithm, problem, _, _, data, _, _, _ = args
    carry, run_key = _start(*args)
    carry, history = jax.lax.scan(
        lambda c, _: _chunk(algorithm, problem, data, c, run_key, record_every),
        carry,
        length=num_records,
    )
    result = _finish(algorithm, carry, history)
    return _checked(result) if throw else result


def _checked(result: BilevelResult) -> BilevelResult:
    """`result`, raising (also under `jit`) when its status is a failure. The check
    rides on a scalar field, so that the chunked runs' eager program is the same
    for every number of records."""
    steps = result.result.error_if(
        result.num_steps, result.result != RESULTS.successful
    )
    return eqx.tree_at(lambda r: r.num_steps, result, steps)


@ft.cache
def _default_key():
    """`jax.random.key(0)`, made once (an eager key costs as much as a small run's
    dispatch) and not at import (JAX's backend starts at the first array);
    concrete even when first asked for under `jit`."""
    with jax.ensure_compile_time_eval():
        return jax.random.key(0)


def _run_from_python(args, num_records, record_every, progress, callback):
    """The records one compiled chunk at a time, with a bar and/or a callback."""
    if any(isinstance(a, jax.core.Tracer) for a in jtu.tree_leaves(args)):
        raise ValueError(
            "`progress=True` and `callback` drive the run from Python and cannot be "
            "used inside `jit` or `vmap`; call `run` outside them."
        )
    algorithm, problem, _, _, data, _, _, _ = args
    name = type(algorithm).__name__
    bar = _progress_bar(name, num_records * record_every) if progress else None
    try:
        carry, run_key = _start_jit(*args)
        carry = _as_loop_types(algorithm, problem, data, carry, run_key)
        # a chunk of no steps compiles the chunk (once: its length is a value) before
        # the bar starts, so that rate and ETA count compiled steps only
        jax.block_until_ready(
            _chunk_jit(algorithm, problem, data, carry, run_key, jnp.asarray(0))
        )
        if bar is not None:
            bar.set_description(name)
            bar.reset()
        records = []
        for _ in range(num_records):
            carry, record = _chunk_jit(
                algorithm, problem, data, carry, run_key, jnp.asarray(record_every)
            )
            records.append(record)
            if bar is not None:
                bar.update(record_every)
                bar.set_postfix(
                    outer_loss=f"{float(record.outer_loss):.4g}",
                    hypergradient_norm=f"{float(record.hypergradient_norm):.3g}",
                )
            if callback is not None:
                callback(record, *algorithm.iterates(carry[0]))
    finally:
        if bar is not None:
            bar.close()
    history = jtu.tree_map(lambda *r: jax.device_put(np.stack(r)), *records)
    # the history stays out of the compiled call, whose program is then the same
    # for any number of records
    return eqx.tree_at(
        lambda r: r.history,
        _finish_jit(algorithm, carry, None),
        history,
        is_leaf=lambda h: h is None,
    )


def _as_loop_types(algorithm, problem, data, carry, run_key):
    """The carry with the types that chunks give back: a weakly typed start (e.g.
    `x0 = jnp.log(0.1)`) comes back strongly typed from the loop, one dependent
    leaf more per chunk (`x`, then Adam's moments), and each new set of types
    would compile another program. Traced (not compiled) only when a leaf is weak."""
    weak = lambda a: getattr(a, "weak_type", False)
    chunk = ft.partial(_chunk, algorithm, problem, data)
    # a weak leaf that the loop makes strong: converted as the loop converts it
    convert = lambda a, s: jnp.asarray(a, s.dtype) if weak(a) and not weak(s) else a
    while any(map(weak, jtu.tree_leaves(carry))):
        out, _ = eqx.filter_eval_shape(chunk, carry, run_key, jnp.asarray(0))
        new = jtu.tree_map(convert, carry, out)
        if list(map(weak, jtu.tree_leaves(new))) == list(
            map(weak, jtu.tree_leaves(carry))
        ):
            break  # the weak leaves left stay weak in the loop
        carry = new
    return carry


def _progress_bar(name, total):
    try:
        from tqdm.auto import tqdm
    except ImportError as e:  # pragma: no cover - depends on environment
        raise ImportError("`progress=True` needs tqdm: `pip install tqdm`.") from e
    return tqdm(total=total, desc=f"{name} (compiling…)")


def _chunk(algorithm, problem, data, carry, run_key, length):
    """`length` steps (an array: one compiled program for every length), then one
    history record. Step `t` since `init` draws its batches from
    `fold_in(run_key, t)`."""

    x, _ = algorithm.iterates(carry[0])
    dtype = jnp.result_type(*jtu.tree_leaves(x))

    def one(_, loop):
        (state, failed, done, start, t, unconverged), norm = loop
        key = jax.random.fold_in(run_key, t)

        def advance(state):
            new, info = algorithm.step(problem, state, data, key)
            finite = tree_all_bounded(algorithm.iterates(new)) & jnp.isfinite(
                info.hypergradient_norm
            )
            code = jnp.where(
                finite,
                jnp.where(info.inner_failed, _INNER_FAILED, _RUNNING),
                _DIVERGED,
            ).astype(jnp.int32)
            ok = code == _RUNNING
            new = jtu.tree_map(
                lambda a, b: jnp.where(ok, a, b),
                eqx.filter(new, eqx.is_array),
                eqx.filter(state, eqx.is_array),
            )
            new = eqx.combine(new, eqx.filter(state, eqx.is_array, inverse=True))
            missed = ok & ~info.inner_converged
            return new, (info.hypergradient_norm.astype(dtype), code, missed)

        def skip(state):
            return state, (jnp.full((), jnp.nan, dtype), failed, jnp.array(False))

        state, (norm, code, missed) = jax.lax.cond(
            failed != _RUNNING, skip, advance, state
        )
        ok = (code == _RUNNING).astype(done.dtype)
        unconverged = unconverged + missed.astype(done.dtype)
        return (state, code, done + ok, start, t + 1, unconverged), norm

    nan = jnp.full((), jnp.nan, dtype)
    carry, norm = jax.lax.fori_loop(0, length, one, (carry, nan))
    state, code, done, start, t, unconverged = carry
    record = _full_batch_record(
        algorithm, problem, state, data, StepInfo(norm), start + done
    )
    code = _record_code(record, code)
    return (state, code, done, start, t, unconverged), record


_start_jit = eqx.filter_jit(_start)
_chunk_jit = eqx.filter_jit(_chunk)
_finish_jit = eqx.filter_jit(_finish)
