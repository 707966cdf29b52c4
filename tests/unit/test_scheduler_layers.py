"""The scheduler's layering, where import-linter cannot see it (pyproject.toml holds the
contracts it can): no import hidden behind TYPE_CHECKING, and no database driver in the
engine."""

from __future__ import annotations

import ast
from pathlib import Path

SCHEDULER = Path(__file__).resolve().parents[2] / "services" / "scheduler"
ENGINE = SCHEDULER / "engine"


def _sources(root: Path) -> list[Path]:
    paths = sorted(root.rglob("*.py"))
    assert paths, f"no sources under {root}"
    return paths


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_import_hides_behind_type_checking() -> None:
    """A module that needs TYPE_CHECKING to import its caller has the layering wrong: the
    shared types belong in records.py, the caller's behaviour in callbacks."""
    offenders = [
        str(path.relative_to(SCHEDULER)) for path in _sources(SCHEDULER)
        if "TYPE_CHECKING" in path.read_text()
    ]
    assert offenders == []


def test_the_engine_never_touches_the_database() -> None:
    """PostgreSQL is persistence's (services/scheduler/persistence/); the engine decides in
    memory and hands its Effects over."""
    offenders = {
        str(path.relative_to(SCHEDULER)): sorted(
            name for name in _imported(path)
            if name.split(".")[0] == "asyncpg" or name.startswith("services.scheduler.persistence")
        )
        for path in _sources(ENGINE)
    }
    assert {path: names for path, names in offenders.items() if names} == {}
