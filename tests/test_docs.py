"""The documentation site: every public name is in the API reference, the pages'
code runs, and `mkdocs build --strict` passes."""

import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC_MODULES = [
    "bilevax",
    "bilevax.implicit",
    "bilevax.implicit.conditions",
    "bilevax.solvers",
    "bilevax.solvers.sketch",
    "bilevax.bilevel",
    "bilevax.bilevel.sets",
    "bilevax.bilevel.kernels",
    "bilevax.datasets",
    "bilevax.datasets.cutest",
    "bilevax.prox",
    "bilevax.sklearn",
]


def _resolve(path: str):
    module, _, rest = path.partition(".")
    obj = importlib.import_module(module)
    for part in rest.split(".") if rest else []:
        obj = getattr(obj, part)
    return obj


def _directives() -> list[str]:
    pages = sorted((DOCS / "api").glob("*.md"))
    return [m for p in pages for m in re.findall(r"^::: (\S+)$", p.read_text(), re.M)]


def _public_names():
    for module in PUBLIC_MODULES:
        for name in importlib.import_module(module).__all__:
            yield f"{module}.{name}"


def test_every_public_name_is_in_the_api_reference():
    directives = _directives()
    documented = {id(_resolve(d)) for d in directives}
    missing = [n for n in _public_names() if id(_resolve(n)) not in documented]
    assert not missing, f"public names missing from docs/api/*.md: {missing}"
    assert len(directives) == len(set(directives)), "a name is documented twice"


def test_the_api_reference_lists_only_public_names():
    public = {id(_resolve(n)) for n in _public_names()}
    extra = [d for d in _directives() if id(_resolve(d)) not in public]
    assert not extra, f"docs/api/*.md documents names not in any `__all__`: {extra}"


def _public_objects():
    seen = set()
    for path in _public_names():
        obj = _resolve(path)
        if inspect.ismodule(obj) or id(obj) in seen:
            continue
        seen.add(id(obj))
        yield path, obj


@pytest.mark.parametrize("path", [p for p, _ in _public_objects()])
def test_every_public_function_and_class_has_an_example(path):
    doc = inspect.getdoc(_resolve(path)) or ""
    assert ">>>" in doc, f"{path}'s docstring has no example (checked by doctest)"


PAGES = sorted(
    p.relative_to(DOCS).as_posix()
    for p in DOCS.rglob("*.md")
    if "```python" in p.read_text()
)


@pytest.mark.parametrize("page", PAGES)
def test_the_code_of_each_page_runs(page, tmp_path):
    """The page's ```python blocks, in order, as one script in a fresh interpreter
    (blocks shown for illustration only are in other languages, e.g. ```text)."""
    text = (DOCS / page).read_text()
    code = "\n".join(re.findall(r"^```python\n(.*?)^```", text, re.S | re.M))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{page}:\n{done.stderr[-3000:]}"


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="install the `docs` extra")
    pytest.importorskip("mkdocstrings_handlers.python", reason="install `docs`")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert (tmp_path / "api" / "bilevel" / "index.html").exists()
