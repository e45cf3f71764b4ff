"""Imports an example script as a module (its `main` is not run)."""

import importlib.util

from ._run import ROOT


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "examples" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
