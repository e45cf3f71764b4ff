"""Docstring examples run in JAX's default precision (float32), as a user running
them sees them, whatever precision the test modules set for themselves."""

import jax
import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(autouse=True)
def _doctests_in_default_precision(request):
    if not isinstance(request.node, DoctestItem):
        yield
        return
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# A script run by tests/test_distributed.py in fresh interpreters (it reads its
# command line at import): not a module to import for doctests.
collect_ignore = ["tests/_distributed_worker.py"]
