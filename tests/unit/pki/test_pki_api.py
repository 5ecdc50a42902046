"""The public surface of `pki`: complete `__all__`, typed, errors under one root."""

from __future__ import annotations

import inspect
from pathlib import Path

import pki


def test_all_lists_exactly_the_public_names() -> None:
    public = {
        name for name, value in vars(pki).items() if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(pki.__all__) == public
    assert len(pki.__all__) == len(set(pki.__all__))


def test_public_callables_and_classes_have_docstrings() -> None:
    for name in pki.__all__:
        value = getattr(pki, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_every_error_derives_from_pki_error() -> None:
    errors = [getattr(pki, n) for n in pki.__all__ if n.endswith("Error")]
    assert len(errors) >= 7
    assert all(issubclass(e, pki.PkiError) for e in errors)
    assert issubclass(pki.ValidityError, pki.IssueError)


def test_enums_have_the_documented_values() -> None:
    assert [r.value for r in pki.Role] == ["reader", "writer", "admin", "node"]
    assert [k.value for k in pki.KeyType] == ["p256", "rsa4096"]


def test_package_ships_py_typed() -> None:
    assert (Path(pki.__file__).parent / "py.typed").is_file()
