"""`print` of every status, alone and inside every result type, names it.

The status enumerations and the result types (public classes with a status field)
are found by walking the public API, so that a new one is covered too. Each result
type is built directly from its fields (no solve: only its `repr` is under test),
once per member of each of its status enumerations."""

import dataclasses
import importlib

import equinox.internal as eqxi
import jax.numpy as jnp
import pytest

import bilevax
from bilevax.bilevel import History

PACKAGES = ["bilevax", "bilevax.bilevel", "bilevax.implicit", "bilevax.solvers"]


def _public():
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            yield getattr(module, name)


def _is_status(kind) -> bool:
    return isinstance(kind, type) and issubclass(kind, eqxi.Enumeration)


def _members(enumeration) -> list[str]:
    return list(enumeration._name_to_item)


ENUMERATIONS = {obj for obj in _public() if _is_status(obj)}
RESULT_TYPES = {
    obj: [f for f in dataclasses.fields(obj) if _is_status(f.type)]
    for obj in _public()
    if isinstance(obj, type) and dataclasses.is_dataclass(obj)
}
RESULT_TYPES = {kind: fields for kind, fields in RESULT_TYPES.items() if fields}


def test_the_walk_finds_the_known_ones():
    assert {bilevax.bilevel.RESULTS, bilevax.solvers.RESULTS} <= ENUMERATIONS
    names = {kind.__name__ for kind in RESULT_TYPES}
    assert names >= {
        "BilevelResult",
        "HypergradientStats",
        "ConstrainedSolution",
        "PolyhedralProjection",
        "ImplicitStats",
        "SupportStats",
    }


@pytest.mark.parametrize("enumeration", sorted(ENUMERATIONS, key=repr))
def test_every_status_prints_its_name(enumeration, capsys):
    for name in _members(enumeration):
        member = getattr(enumeration, name)
        assert str(member) == repr(member) == name
        print(member)
        assert capsys.readouterr().out == name + "\n"


def _value(field):
    """A stand-in for a field: a status's first member, the history of one record,
    empty dicts where a dict is expected (`stats`, `multipliers`), a scalar
    otherwise."""
    if _is_status(field.type):
        return getattr(field.type, _members(field.type)[0])
    if field.type is History:
        return History(*(jnp.zeros(1) for _ in range(4)))
    if getattr(field.type, "__origin__", None) is dict:
        return {}
    return jnp.zeros(())


def _build(kind, statuses: dict):
    fields = dataclasses.fields(kind)
    return kind(**{f.name: statuses.get(f.name, _value(f)) for f in fields})


@pytest.mark.parametrize("kind", sorted(RESULT_TYPES, key=lambda k: k.__name__))
def test_every_result_type_prints_every_status_by_name(kind):
    for field in RESULT_TYPES[kind]:
        for name in _members(field.type):
            result = _build(kind, {field.name: getattr(field.type, name)})
            assert f"{field.name}={name}" in repr(result)
            assert f"{field.name}={name}" in str(result)
