"""The project's generic top-level package names resolve to this project, never a namesake."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "name", ["app", "schema", "resolvers", "jobs", "ml", "sandbox", "portal", "migrations"]
)
def test_package_is_ours(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == ROOT / name
