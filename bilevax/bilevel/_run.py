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
(`|a| >= √max` of the dtype: about 1e154 in float64, 1.8e19 in float32), is undone
and the run stops there with `result = RESULTS.diverged`: a NaN or an overflowing
iterate is never returned as an answer. Likewise a step
whose inner solve reports failure (a constrained lower level that is infeasible at
the current `x`) is undone and the run stops with `RESULTS.inner_failed`.
"""

import abc
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
    >>> result = diverging.run(problem, x0, y0, num_steps=50)
    >>> print(result.result == bx.bilevel.RESULTS.diverged, jnp.isfinite(result.x))
    True [ True  True]

    ```
    """

    successful = ""
    diverged = (
        "The run diverged: a step produced a non-finite x or y (NaN or infinity) or "
        "one beyond the square root of the largest float. The result holds the last "
        "iterate before it; lower the step sizes, or check that the lower level is "
        "bounded below."
    )
    inner_failed = (
        "The lower-level solve failed (e.g. its constraints are infeasible at the "
        "current x): the run stopped there, and the result holds that x."
    )


class StepInfo(eqx.Module):
    """What one step knows about itself: the norm of the (estimated) hypergradient
    or direction it used for `x` (recorded in the history), and whether its inner
    solve failed.

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
    >>> print(info.hypergradient_norm.round(4), info.inner_failed)
    1.4142 False

    ```
    """

    hypergradient_norm: Array
    inner_failed: Array = eqx.field(default_factory=lambda: jnp.array(False))


class History(eqx.Module):
    """Recorded every `record_every` steps (arrays of length `num_records`).

    - `step`: outer iterations done at the record.
    - `outer_loss`: `f(x, y)` on the whole outer data at the current `(x, y)`.
    - `hypergradient_norm`: norm of the (estimated) hypergradient of the last step.
    - `inner_residual`: `‖∇_y g(x, y)‖` on the whole inner data: 0 at an
      unconstrained inner minimum, so small is good. With constraints on the
      lower level (`LVHBA`) it does not go to 0: at the constrained minimum
      `∇_y g` is balanced by the constraints' multipliers, so a value such as 2
      there is no failure; judge such runs by `result` and the outer loss.

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
    `init` (pass the result as `run(..., state=result)` to continue it).

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

    def __repr__(self):
        fields = {
            "result": status_name(self.result),
            "num_steps": summarize(self.num_steps),
        }
        h = self.history
        if h.step.ndim == 1 and not isinstance(h.step, jax.core.Tracer):
            for k in ("outer_loss", "hypergradient_norm", "inner_residual"):
                fields[k] = summarize(getattr(h, k)[-1])
        fields["x"], fields["y"] = summarize(self.x), summarize(self.y)
        return fields_repr("BilevelResult", fields)


def _full_batch_record(problem, x, y, data: BilevelData, info: StepInfo, k):
    outer = problem.outer(x, y, data.outer)
    grad_y = jax.grad(problem.inner, argnums=1)(x, y, data.inner)
    return History(k, outer, info.hypergradient_norm, tree_norm(grad_y))


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
        key = jax.random.key(0) if key is None else key
        earlier, start = None, None
        if isinstance(state, BilevelResult):
            earlier, start, state = state.history, state.total_steps, state.state
        args = (self, problem, x0, y0, data, key, state, start)
        if progress or callback is not None:
            result = _run_from_python(
                args, num_records, record_every, progress, callback
            )
        else:
            result = _run_compiled(args, num_records, jnp.asarray(record_every))
        if earlier is None:
            return result
        history = jtu.tree_map(
            lambda a, b: jnp.concatenate([a, b]), earlier, result.history
        )
        return eqx.tree_at(lambda r: r.history, result, history)


_RUNNING, _DIVERGED, _INNER_FAILED = 0, 1, 2


def _start(algorithm, problem, x0, y0, data, key, state, start):
    """Checks, `init` (unless resumed) and the loop's carry
    `(state, status code, steps done, steps before this run, next step index)`."""
    check_problem(problem, x0, y0, data)
    init_key, run_key = jax.random.split(key)
    # strongly typed, so that a chunk's carry out has the types of its carry in
    start = jnp.zeros((), int) if start is None else jnp.asarray(start)
    if state is None:
        state = algorithm.init(problem, x0, y0, data, init_key)
    return (
        state,
        jnp.array(_RUNNING, jnp.int32),
        jnp.zeros_like(start),
        start,
        start,
    ), run_key


def _finish(algorithm, carry, history):
    state, failed, done, start, _ = carry
    x, y = algorithm.iterates(state)
    result = RESULTS.where(
        failed == _DIVERGED,
        RESULTS.diverged,
        RESULTS.where(
            failed == _INNER_FAILED, RESULTS.inner_failed, RESULTS.successful
        ),
    )
    return BilevelResult(x, y, state, history, result, done, start + done)


# Compiled once per static configuration and shapes: `num_steps` and `record_every`
# are values in the loop (only the number of records sizes the history), so calling
# `run` again, eagerly, with the same problem functions reuses the compiled program.
@eqx.filter_jit
def _run_compiled(args, num_records, record_every):
    algorithm, problem, _, _, data, _, _, _ = args
    carry, run_key = _start(*args)
    carry, history = jax.lax.scan(
        lambda c, _: _chunk(algorithm, problem, data, c, run_key, record_every),
        carry,
        length=num_records,
    )
    return _finish(algorithm, carry, history)


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
        (state, failed, done, start, t), norm = loop
        key = jax.random.fold_in(run_key, t)

        def advance(state):
            new, info = algorithm.step(problem, state, data, key)
            finite = tree_all_bounded(algorithm.iterates(new))
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
            return new, (info.hypergradient_norm.astype(dtype), code)

        def skip(state):
            return state, (jnp.full((), jnp.nan, dtype), failed)

        state, (norm, code) = jax.lax.cond(failed != _RUNNING, skip, advance, state)
        ok = code == _RUNNING
        return (state, code, done + ok.astype(done.dtype), start, t + 1), norm

    nan = jnp.full((), jnp.nan, dtype)
    carry, norm = jax.lax.fori_loop(0, length, one, (carry, nan))
    state, _, done, start, _ = carry
    x, y = algorithm.iterates(state)
    return carry, _full_batch_record(problem, x, y, data, StepInfo(norm), start + done)


_start_jit = eqx.filter_jit(_start)
_chunk_jit = eqx.filter_jit(_chunk)
_finish_jit = eqx.filter_jit(_finish)
