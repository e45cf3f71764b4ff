"""`plot_history`: loss and hypergradient-norm curves of one or several runs."""

from collections.abc import Mapping

import numpy as np

from ._run import BilevelResult, History


def plot_history(
    histories: History | BilevelResult | Mapping[str, History | BilevelResult],
    *,
    seconds: float | Mapping[str, float] | None = None,
    axes=None,
    title: str | None = None,
):
    """Plot the outer loss and the hypergradient norm of the `History` records of
    one run or of several (a `{label: history}` mapping), against outer steps or,
    with `seconds`, against time.

    **Arguments:**

    - `histories`: a `History`, a `BilevelResult` (its `history`), or a mapping
      from labels to either.
    - `seconds`: the run time of each run (compile excluded), one number or one per
      label; the records are then placed at `seconds · step / last step` (a run's
      steps take equal time).
    - `axes`: two matplotlib axes to draw on (default: a new 1×2 figure).
    - `title`: the figure title.

    **Returns:** `(figure, (loss_axis, norm_axis))`. Needs matplotlib
    (`pip install 'bilevax[examples]'`).

    ```python
    result = algorithm.run(problem, x0, y0, data, num_steps=500)
    fig, _ = bx.bilevel.plot_history({"HOAG": result}, seconds=3.2)
    fig.savefig("history.png")
    ```

    Example:

    ```python
    >>> import jax, jax.numpy as jnp, optax
    >>> import bilevax as bx
    >>> problem = bx.bilevel.BilevelProblem(  # y*(x) = x, F(x) = ½‖x - 1‖² + ½‖x‖²
    ...     outer=lambda x, y, b: 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2),
    ...     inner=lambda x, y, b: 0.5 * jnp.sum((y - x) ** 2),
    ... )
    >>> x0, y0 = jnp.zeros(2), jnp.zeros(2)
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import matplotlib; matplotlib.use("Agg")
    >>> algorithms = {"HOAG": bx.bilevel.HOAG(), "F2SA": bx.bilevel.F2SA()}
    >>> runs = {k: a.run(problem, x0, y0, num_steps=50) for k, a in algorithms.items()}
    >>> seconds = {"HOAG": 0.2, "F2SA": 0.1}
    >>> fig, (loss_axis, norm_axis) = bx.bilevel.plot_history(runs, seconds=seconds)
    >>> len(loss_axis.lines), norm_axis.get_ylabel()
    (2, 'hypergradient norm')

    ```
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on environment
        raise ImportError(
            "`plot_history` needs matplotlib: `pip install 'bilevax[examples]'`."
        ) from e
    if not isinstance(histories, Mapping):
        histories = {None: histories}
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    else:
        fig = axes[0].figure
    loss_ax, norm_ax = axes
    for label, history in histories.items():
        if isinstance(history, BilevelResult):
            history = history.history
        if not isinstance(history, History):
            raise TypeError(
                f"`histories` must hold `History` or `BilevelResult` objects; got "
                f"{type(history).__name__} for {label!r}."
            )
        step = np.asarray(history.step, float)
        if step.ndim != 1:
            raise ValueError(
                "`plot_history` takes the history of one run (1-D records); index a "
                "batched (vmapped) history first, e.g. `jax.tree.map(lambda a: a[0], "
                "history)`."
            )
        total = seconds.get(label) if isinstance(seconds, Mapping) else seconds
        where = step if total is None else total * step / max(step[-1], 1.0)
        loss_ax.plot(where, np.asarray(history.outer_loss), label=label)
        norm_ax.semilogy(where, np.asarray(history.hypergradient_norm), label=label)
    xlabel = "outer step" if seconds is None else "time (s, compile excluded)"
    for ax, ylabel in ((loss_ax, "outer loss"), (norm_ax, "hypergradient norm")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if any(label is not None for label in histories):
            ax.legend()
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig, (loss_ax, norm_ax)
