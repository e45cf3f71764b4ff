"""Repeated eager calls reuse their compiled program: the problem functions are
traced once (counted by a Python counter inside them) and XLA compiles nothing
more (counted by JAX's compile events); a progress bar's chunk compiles once
whatever `num_steps`."""

import contextlib

import jax
import jax.numpy as jnp
import optax

import bilevax as bx

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Yields a list of the names of the functions XLA compiled so far."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == _COMPILE_EVENT:
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def counted_problem():
    """`y*(x) = x`, `F(x) = ½‖x - 1‖² + ½‖x‖²`; `traces[0]` counts the traces of
    the inner loss."""
    traces = [0]

    def inner(x, y, batch):
        traces[0] += 1
        return 0.5 * jnp.sum((y - x) ** 2)

    def outer(x, y, batch):
        return 0.5 * jnp.sum((y - 1.0) ** 2) + 0.5 * jnp.sum(x**2)

    return bx.bilevel.BilevelProblem(outer=outer, inner=inner), traces


X0 = Y0 = jnp.zeros(3)


def test_repeated_eager_run_reuses_its_compiled_program():
    problem, traces = counted_problem()
    solver = bx.bilevel.HOAG()
    first = solver.run(problem, X0, Y0, num_steps=20, record_every=5)
    traced = traces[0]
    assert traced > 0
    with count_compiles() as compiles:
        again = solver.run(problem, X0, Y0, num_steps=20, record_every=5)
        # as many records: the steps per record are a value, not a shape
        longer = solver.run(problem, X0, Y0, num_steps=40, record_every=10)
    assert traces[0] == traced and not compiles
    assert jnp.array_equal(again.x, first.x)
    assert again.history.step.tolist() == [5, 10, 15, 20]
    assert longer.history.step.tolist() == [10, 20, 30, 40]
    # an equal solver (a new object) finds the same program too
    bx.bilevel.HOAG().run(problem, X0, Y0, num_steps=20, record_every=5)
    assert traces[0] == traced


def test_progress_compiles_its_chunk_once(capsys):
    problem, traces = counted_problem()
    solver = bx.bilevel.HypergradientDescent(optax.sgd(0.3))
    first = solver.run(problem, X0, Y0, num_steps=10, record_every=5, progress=True)
    traced = traces[0]
    bar = capsys.readouterr().err
    assert "HypergradientDescent (compiling…)" in bar and "10/10" in bar
    with count_compiles() as compiles:
        other = solver.run(
            problem,
            X0,
            Y0,
            num_steps=30,
            record_every=3,
            progress=True,
            callback=lambda *a: None,
        )
    assert traces[0] == traced and not compiles
    assert other.history.step.tolist() == list(range(3, 31, 3))
    plain = solver.run(problem, X0, Y0, num_steps=10, record_every=5)
    assert jnp.array_equal(plain.x, first.x)


def test_progress_from_a_weakly_typed_start_compiles_its_chunk_once():
    """`x0 = jnp.log(1.0)` is weakly typed; the loop's carry becomes strongly typed
    one leaf per chunk (x, then Adam's moments): one program nonetheless."""
    problem, _ = counted_problem()
    solver = bx.bilevel.HypergradientDescent(optax.adam(0.1))
    x0 = jnp.log(1.0)
    assert x0.weak_type
    with count_compiles() as compiles:
        result = solver.run(
            problem, x0, Y0, num_steps=20, record_every=5, callback=lambda *a: None
        )
    assert compiles.count("jit(_chunk)") == 1
    plain = solver.run(problem, x0, Y0, num_steps=20, record_every=5)
    assert jnp.array_equal(result.x, plain.x)


def test_repeated_eager_hypergradient_reuses_its_compiled_program():
    problem, traces = counted_problem()
    x, x2 = jnp.array([1.0, 2.0, 3.0]), jnp.array([2.0, 4.0, 6.0])
    first = bx.bilevel.hypergradient(problem, x, Y0)
    traced = traces[0]
    with count_compiles() as compiles:
        again = bx.bilevel.hypergradient(problem, x2, Y0)
    assert traces[0] == traced and not compiles
    assert jnp.allclose(first[1], 2 * x - 1) and jnp.allclose(again[1], 4 * x - 1)


def test_repeated_eager_distillation_run_compiles_nothing():
    X = jax.random.normal(jax.random.key(0), (20, 4))
    Y = jax.nn.one_hot(jnp.arange(20) % 2, 2)
    distill = bx.bilevel.DatasetDistillation(
        bx.bilevel.KernelRidge(bx.bilevel.kernels.RBF())
    )
    run = lambda: distill.run((X[:2], Y[:2]), (X, Y), num_steps=4, record_every=2)
    first = run()
    with count_compiles() as compiles:
        again = run()
    assert not compiles
    assert jnp.array_equal(first.x[0], again.x[0])


def test_repeated_eager_minimize_compiles_nothing():
    problem = bx.solvers.ConstrainedProblem(
        lambda y, a: jnp.sum((y - a) ** 2), eq=lambda y, a: jnp.sum(y, keepdims=True)
    )
    bx.solvers.minimize(problem, jnp.zeros(3), jnp.arange(3.0))
    with count_compiles() as compiles:
        bx.solvers.minimize(problem, jnp.zeros(3), jnp.arange(3.0))
    assert not compiles


def test_repeated_eager_projection_traces_its_constraints_once():
    traces = [0]

    def eq(v):  # the probability simplex
        traces[0] += 1
        return jnp.array([jnp.sum(v) - 1.0])

    box = (jnp.zeros(3), jnp.ones(3))
    project = lambda t: bx.solvers.project_polyhedron(t, eq=eq, bounds=box)
    first = project(jnp.array([0.9, 0.8, -0.2]))
    traced = traces[0]
    with count_compiles() as compiles:
        again = project(jnp.array([0.5, 0.3, 0.4]))
    assert traces[0] == traced and not compiles
    assert jnp.allclose(first.y, jnp.array([0.55, 0.45, 0.0]))
    assert jnp.allclose(again.y, jnp.array([0.5, 0.3, 0.4]) - 0.2 / 3)
