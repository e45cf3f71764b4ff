"""Long-run user experience: progress bar and callback (same numbers as the plain
compiled run), readable reprs of results and statistics, the history plot."""

import jax
import jax.numpy as jnp
import lineax as lx
import matplotlib
import optax
import pytest

import bilevax as bx

from ._quadratic import Quadratic

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def quadratic():
    return Quadratic(dx=4, dy=8, n=64)


ALGORITHMS = [
    bx.bilevel.HypergradientDescent(optax.sgd(0.2)),
    bx.bilevel.F2SA(batch_size=16),
]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: type(a).__name__)
def test_progress_and_callback_give_the_same_numbers(quadratic, algorithm, capsys):
    Q = quadratic
    kwargs = dict(num_steps=30, record_every=10, key=jax.random.key(3))
    plain = algorithm.run(Q.problem, Q.x0, Q.y0, Q.data, **kwargs)
    seen = []

    def callback(record, x, y):
        seen.append((int(record.step), float(record.outer_loss), x, y))

    live = algorithm.run(
        Q.problem, Q.x0, Q.y0, Q.data, progress=True, callback=callback, **kwargs
    )
    assert jnp.array_equal(plain.x, live.x) and jnp.array_equal(plain.y, live.y)
    # the records are computed by separately compiled code: equal to rounding
    pairs = zip(
        jax.tree.leaves(plain.history), jax.tree.leaves(live.history), strict=True
    )
    for a, b in pairs:
        assert jnp.allclose(a, b, rtol=1e-12, atol=0)
    assert [s[0] for s in seen] == [10, 20, 30]
    assert jnp.allclose(jnp.array([s[1] for s in seen]), plain.history.outer_loss)
    assert jnp.array_equal(seen[-1][2], plain.x)
    bar = capsys.readouterr().err
    assert type(algorithm).__name__ in bar and "30/30" in bar
    assert "outer_loss=" in bar and "hypergradient_norm=" in bar
    assert bar.index("(compiling…)") < bar.index("30/30")


def test_progress_inside_jit_is_a_clear_error(quadratic):
    Q = quadratic
    algorithm = ALGORITHMS[0]
    run = jax.jit(
        lambda x0: algorithm.run(
            Q.problem, x0, Q.y0, Q.data, num_steps=4, progress=True
        )
    )
    with pytest.raises(ValueError, match="cannot be used inside `jit`"):
        run(Q.x0)


def test_results_print_readably(quadratic):
    Q = quadratic
    result = ALGORITHMS[0].run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=20)
    text = repr(result)
    assert text.startswith("BilevelResult(result=successful, num_steps=20, ")
    assert "outer_loss=" in text and "x=f64[4], y=f64[8]" in text
    assert "History(records=i64[" in repr(result.history)
    batched = jax.vmap(
        lambda k: ALGORITHMS[1].run(Q.problem, Q.x0, Q.y0, Q.data, key=k, num_steps=3)
    )(jax.random.split(jax.random.key(0), 2))
    assert "result=[successful, successful]" in repr(batched)

    _, _, _, stats = bx.bilevel.hypergradient(Q.problem, Q.x0, Q.y0, data=Q.data)
    assert repr(stats).startswith("HypergradientStats(inner_steps=")
    assert "linear_result=successful" in repr(stats)

    problem = bx.solvers.ConstrainedProblem(
        lambda y, a: jnp.sum((y - a) ** 2), eq=lambda y, a: jnp.sum(y, keepdims=True)
    )
    solution = bx.solvers.minimize(problem, jnp.zeros(3), jnp.arange(3.0))
    text = repr(solution)
    assert text.startswith("ConstrainedSolution(result=successful, num_steps=")
    assert "y=f64[3], multipliers={eq: f64[1]}" in text

    _, stats = bx.implicit.root_vjp(
        lambda y, t: y - t, jnp.ones(2), (jnp.ones(2),), jnp.ones(2)
    )
    assert repr(stats).startswith("ImplicitStats(num_steps=")
    assert repr(stats).endswith(", result=successful)")


def test_plot_history(quadratic):
    Q = quadratic
    runs = {
        type(a).__name__: a.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=20)
        for a in ALGORITHMS
    }
    fig, (loss_ax, norm_ax) = bx.bilevel.plot_history(runs, seconds={"F2SA": 2.0})
    assert len(loss_ax.lines) == 2 and len(norm_ax.lines) == 2
    assert loss_ax.get_xlabel().startswith("time")
    assert loss_ax.lines[1].get_xdata()[-1] == pytest.approx(2.0)
    fig, _ = bx.bilevel.plot_history(runs["F2SA"].history)
    with pytest.raises(TypeError, match="History"):
        bx.bilevel.plot_history({"a": jnp.ones(3)})
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), runs["F2SA"].history)
    with pytest.raises(ValueError, match="one run"):
        bx.bilevel.plot_history(stacked)


def test_statuses_print_their_names_alone_and_by_batch(quadratic):
    Q = quadratic
    result = ALGORITHMS[0].run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=5)
    assert str(result.result) == "successful" == repr(result.result)
    assert repr(bx.bilevel.RESULTS.diverged) == "diverged"
    assert repr(bx.solvers.RESULTS.successful) == "successful"
    # other libraries' enumerations keep equinox's repr
    assert repr(lx.RESULTS.successful).startswith("lineax")

    def run(lr):
        solver = bx.bilevel.HypergradientDescent(optax.sgd(lr))
        return solver.run(Q.problem, Q.x0, Q.y0, Q.data, num_steps=10, throw=False)

    runs = jax.vmap(run)(jnp.array([0.1, 1e100, 0.2]))
    assert str(runs.result) == "[successful, diverged, successful]"
    assert bx.statuses(runs).tolist() == ["successful", "diverged", "successful"]
    assert bx.statuses(runs.result)[1] == "diverged"
    assert bx.status_counts(runs) == {
        "successful": 2,
        "diverged": 1,
        "inner_failed": 0,
    }
    failed = jnp.flatnonzero(runs.result != bx.bilevel.RESULTS.successful)
    assert failed.tolist() == [1]
    with pytest.raises(TypeError, match="`status` must be a status"):
        bx.statuses(runs.x)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda r: bx.statuses(r))(runs)
