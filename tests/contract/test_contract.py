"""The differentiation contract of every public differentiable entry point (see
`_check.py`): float64 against finite differences, float32 at loose tolerance."""

import jax.numpy as jnp
import pytest

from ._cases import CASES
from ._check import CHECKS, run_check

# Failures that other branches fix; remove these marks when they are merged.
_PENDING = {}

_HEAVY = {"minimize-augmented-lagrangian", "custom_root-pytree", "iterate-implicit"}


def _params():
    for name in CASES:
        for check in CHECKS:
            marks = []
            reason = _PENDING.get((name, check)) or _PENDING.get((name, "*"))
            if reason:
                marks.append(pytest.mark.xfail(strict=False, reason=reason))
            if name in _HEAVY and check != "jacobians":
                marks.append(pytest.mark.slow)
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


@pytest.mark.parametrize("name", _FLOAT32)
def test_contract_float32(name):
    run_check(CASES[name], "jacobians", jnp.float32, rtol=2e-3)
    run_check(CASES[name], "vmap_grad", jnp.float32, rtol=2e-3)
