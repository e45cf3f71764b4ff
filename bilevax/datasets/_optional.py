"""Optional dependencies of the loaders, imported on first use."""

import importlib
from types import ModuleType


def require(module: str, install_hint: str) -> ModuleType:
    """`import module`, or an `ImportError` that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(install_hint) from e
