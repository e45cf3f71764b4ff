"""The differentiation contract of every public differentiable entry point (see
`_check.py`): float64 against finite differences, float32 at loose tolerance."""

import jax.numpy as jnp
import pytest

from ._cases import CASES
from ._check import CHECKS, run_check

# The default run keeps one cheap check per kind of entry point (the suite's time
# budget); the whole matrix runs with `-m slow`.
_DEFAULT = {
    ("custom_root-ridge", "jacobians"),
    ("custom_fixed_point", "jacobians"),
    ("iterate-truncated-K>=T", "jacobians"),
    ("kernels-rbf", "jacobians"),
}


def _params():
    for name in CASES:
        for check in CHECKS:
            marks = [] if (name, check) in _DEFAULT else [pytest.mark.slow]
            yield pytest.param(name, check, marks=marks, id=f"{name}-{check}")


@pytest.mark.parametrize("name, check", list(_params()))
def test_contract_float64(name, check):
    run_check(CASES[name], check)


_FLOAT32 = [
    "custom_root-ridge",
    "custom_fixed_point",
    "iterate-unrolled",
    "kernels-ntk",
]


@pytest.mark.parametrize(
    "name",
    [_FLOAT32[0]] + [pytest.param(n, marks=pytest.mark.slow) for n in _FLOAT32[1:]],
)
def test_contract_float32(name):
    run_check(CASES[name], "jacobians", jnp.float32, rtol=2e-3)
    run_check(CASES[name], "vmap_grad", jnp.float32, rtol=2e-3)
