"""The run loop's failure statuses: NaN in the training data, the validation data
or x0 ends every algorithm's run with a failure status (never `successful` with
NaN or unchanged iterates), and raises with `throw=True`."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bilevax as bx

B = bx.bilevel
_rng = np.random.default_rng(0)
_X = jnp.asarray(_rng.normal(size=(20, 3)))
_T = jnp.asarray(_rng.normal(size=20))
GOOD = (_X, _T)
NAN = (_X.at[3, 1].set(jnp.nan), _T)


def _inner(x, w, batch):  # ridge regression with strength exp(x)
    X, t = batch
    return jnp.mean((X @ w - t) ** 2) + jnp.exp(x) * w @ w


def _outer(x, w, batch):
    X, t = batch
    return jnp.mean((X @ w - t) ** 2)


PROBLEM = B.BilevelProblem(outer=_outer, inner=_inner)
ALGORITHMS = {
    "hgd": B.HypergradientDescent(optax.sgd(0.1)),
    "hoag": B.HOAG(),
    "f2sa": B.F2SA(),
    "penalty": B.PenaltyMethod(),
    "soba": B.SOBA(),
}
CASES = {  # (data, x0)
    "train": ((NAN, GOOD), 0.0),
    "validation": ((GOOD, NAN), 0.0),
    "x0": ((GOOD, GOOD), jnp.nan),
}
# two cases in the default run (compilation dominates), the whole matrix under
# `slow`
_DEFAULT = {("hgd", "train"), ("hoag", "validation")}
_MATRIX = [
    pytest.param(a, c, marks=() if (a, c) in _DEFAULT else pytest.mark.slow)
    for a in ALGORITHMS
    for c in CASES
]


@pytest.mark.parametrize("name,case", _MATRIX)
def test_nan_ends_in_a_failure_status(name, case):
    data, x0 = CASES[case]
    run = lambda **kw: ALGORITHMS[name].run(
        PROBLEM, jnp.asarray(x0), jnp.zeros(3), data, num_steps=6, **kw
    )
    result = run(throw=False)
    assert result.result in (B.RESULTS.diverged, B.RESULTS.inner_failed), result
    # no step is taken from a non-finite starting point: nothing NaN is produced
    assert int(result.num_steps) == 0
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN"):
        run()
