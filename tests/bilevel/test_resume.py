"""Resumable runs: a run stopped after N steps, saved with `bx.save`, loaded with
`bx.load` (no template, in this process or a fresh one) and resumed is
bit-identical to an uninterrupted run with the same key, and its history holds
the whole run; the same key gives the same run."""

import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bilevax as bx

from ._quadratic import Quadratic

Q = Quadratic(dx=4, dy=8, n=64)
STOCHASTIC = {
    "HypergradientDescent": bx.bilevel.HypergradientDescent(
        optax.adam(0.05), batch_size=16
    ),
    "HOAG": bx.bilevel.HOAG(),
    "F2SA": bx.bilevel.F2SA(batch_size=16),
    "F2SA-SVRG": bx.bilevel.F2SA(
        batch_size=16, variance_reduction="svrg", noise="none"
    ),
    "PenaltyMethod": bx.bilevel.PenaltyMethod(batch_size=16),
    "LVHBA": bx.bilevel.LVHBA(batch_size=16),
}
# the other algorithms of `bilevax.bilevel` (each compiles three runs: slow)
OTHERS = {
    "SABA": bx.bilevel.SABA(batch_size=16),
    "BOREP": bx.bilevel.BOREP(batch_size=16, period=3),
    "SOBA": bx.bilevel.SOBA(batch_size=16),
    "MASOBA": bx.bilevel.MASOBA(batch_size=16),
    "BOME": bx.bilevel.BOME(batch_size=16),
    "MAID": bx.bilevel.MAID(),
}
ALL = STOCHASTIC | OTHERS
KEY = 7
# 3 records each: the three runs share one compiled program (the steps per record
# are a value in it, not a shape)
WHOLE, FIRST, REST = dict(num_steps=30, record_every=10), (9, 3), (21, 7)


def run(name, num_steps, record_every, state=None):
    return ALL[name].run(
        Q.problem,
        Q.x0,
        Q.y0,
        Q.data,
        key=jax.random.key(KEY),
        num_steps=num_steps,
        record_every=record_every,
        state=state,
    )


def _same(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for u, v in zip(leaves_a, leaves_b, strict=True):
        assert u.dtype == v.dtype, (u.dtype, v.dtype)
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        assert jnp.array_equal(u, v), (u, v)


def _check_resumed(rest, whole, first):
    _same((rest.x, rest.y, rest.state), (whole.x, whole.y, whole.state))
    assert int(rest.total_steps) == 30 and int(rest.num_steps) == 21
    assert rest.history.step.tolist() == [3, 6, 9, 16, 23, 30]
    assert jnp.array_equal(rest.history.outer_loss[:3], first.history.outer_loss)
    assert rest.history.outer_loss[-1] == whole.history.outer_loss[-1]


def test_every_algorithm_is_tested():
    algorithms = {
        name
        for name in bx.bilevel.__all__
        if isinstance(getattr(bx.bilevel, name), type)
        and issubclass(getattr(bx.bilevel, name), bx.bilevel.AbstractBilevelAlgorithm)
        and not name.startswith("Abstract")
    }
    # DatasetDistillation: `distillation_runs` below
    assert algorithms - set(ALL) == {"DatasetDistillation"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in OTHERS else n for n in ALL],
)
def test_stopped_saved_loaded_and_resumed_is_bit_identical(name, tmp_path):
    whole = run(name, **WHOLE)
    first = run(name, *FIRST)
    bx.save(tmp_path / "run.npz", first)
    loaded = bx.load(tmp_path / "run.npz")
    _same(loaded, first)
    assert jax.tree.structure(loaded) == jax.tree.structure(first)
    _check_resumed(run(name, *REST, state=loaded), whole, first)


# Loads each `<name>.npz` of the folder in a fresh process, resumes it and saves
# `<name>-rest.npz`.
_RESUME = """
import sys, jax
jax.config.update("jax_enable_x64", True)
import bilevax as bx
from tests.bilevel.test_resume import REST, run, resume_distillation
for name in sys.argv[2:]:
    path = f"{sys.argv[1]}/{name}"
    loaded = bx.load(path + ".npz")
    if name == "DatasetDistillation":
        rest = resume_distillation(loaded)
    else:
        rest = run(name, *REST, state=loaded)
    bx.save(path + "-rest.npz", rest)
"""


def _resume_in_fresh_process(folder, names):
    root = Path(__file__).parents[2]
    subprocess.run(
        [sys.executable, "-c", _RESUME, str(folder), *names],
        cwd=root,
        check=True,
        timeout=600,
    )


def test_resumed_in_a_fresh_process_is_bit_identical(tmp_path):
    name = "F2SA"
    whole, first = run(name, **WHOLE), run(name, *FIRST)
    bx.save(tmp_path / f"{name}.npz", first)
    _resume_in_fresh_process(tmp_path, [name])
    _check_resumed(bx.load(tmp_path / f"{name}-rest.npz"), whole, first)


@pytest.mark.slow
def test_every_algorithm_resumes_in_a_fresh_process(tmp_path):
    runs = {name: (run(name, **WHOLE), run(name, *FIRST)) for name in ALL}
    for name, (_, first) in runs.items():
        bx.save(tmp_path / f"{name}.npz", first)
    whole, first = distillation_runs()
    bx.save(tmp_path / "DatasetDistillation.npz", first)
    _resume_in_fresh_process(tmp_path, [*ALL, "DatasetDistillation"])
    for name, (whole_run, first_run) in runs.items():
        _check_resumed(bx.load(tmp_path / f"{name}-rest.npz"), whole_run, first_run)
    rest = bx.load(tmp_path / "DatasetDistillation-rest.npz")
    _same((rest.x, rest.state), (whole.x, whole.state))


def test_another_algorithms_state_is_a_clear_error():
    f2sa = run("F2SA", *FIRST)
    for state in (f2sa, f2sa.state):
        with pytest.raises(TypeError, match=r"`state`: HOAG\.run .* F2SA or Penalty"):
            run("HOAG", *REST, state=state)
    hoag = ALL["HOAG"]
    state = hoag.init(Q.problem, Q.x0, Q.y0, bx.bilevel.BilevelData(*Q.data), None)
    nested = eqx.tree_at(lambda s: s.x, state, (state.x,))
    with pytest.raises(TypeError, match="`state`: its pytree structure"):
        run("HOAG", *REST, state=nested)


def test_same_key_same_run_and_another_key_another_run():
    algorithm = STOCHASTIC["F2SA"]
    run = lambda key: algorithm.run(
        Q.problem, Q.x0, Q.y0, Q.data, key=key, num_steps=20
    )
    a, b, c = run(jax.random.key(1)), run(jax.random.key(1)), run(jax.random.key(2))
    _same((a.x, a.y), (b.x, b.y))
    assert not jnp.array_equal(a.x, c.x)


def test_save_names_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match=r"tree\['problem'\]\.outer"):
        bx.save(tmp_path / "f.npz", {"problem": Q.problem})
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not written by `save`"):
        bx.load(tmp_path / "plain.npz")


def _distillation():
    X = jax.random.normal(jax.random.key(0), (40, 6))
    Y = jax.nn.one_hot(jnp.arange(40) % 2, 2) - 0.5
    distill = bx.bilevel.DatasetDistillation(
        bx.bilevel.KernelRidge(bx.bilevel.kernels.RBF()), batch_size=10
    )
    return lambda num_steps, record_every, state=None: distill.run(
        (X[:4], Y[:4]),
        (X, Y),
        key=jax.random.key(3),
        num_steps=num_steps,
        record_every=record_every,
        state=state,
    )


def distillation_runs():
    """The uninterrupted run and its first quarter (3 records each: one program)."""
    run = _distillation()
    return run(12, 4), run(3, 1)


def resume_distillation(loaded):
    return _distillation()(9, 3, loaded)


def test_distillation_resumes_bit_identically(tmp_path):
    whole, first = distillation_runs()
    bx.save(tmp_path / "d.npz", first)
    rest = resume_distillation(bx.load(tmp_path / "d.npz"))
    _same((rest.x, rest.state), (whole.x, whole.state))
    assert rest.history.step.tolist() == [1, 2, 3, 6, 9, 12]
