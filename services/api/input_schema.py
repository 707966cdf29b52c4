"""Run input checked against the workflow version's `input_schema` (JSON Schema).

Validation is the `jsonschema` library's: the schema's `$schema` picks the draft (2020-12 when
absent, which is what the SDK generates). A schema is checked when the workflow is registered,
and compiled once per version, since versions never change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jsonschema import exceptions as jsonschema_errors
from jsonschema import validators
from jsonschema.protocols import Validator
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY

from libs.common.specs import WorkflowSpec

# Messages quote the offending value; a huge input must not make a huge error.
MAX_MESSAGE_CHARS = 300
_MAX_CACHED = 10_000


class InputInvalid(HTTPException):
    """The run input does not fit the schema (422, naming the field and the problem)."""

    status_code = HTTP_422_UNPROCESSABLE_ENTITY


def _validator_class(schema: dict[str, Any]) -> type[Validator]:
    cls: type[Validator] = validators.validator_for(schema, default=validators.Draft202012Validator)
    return cls


def schema_problem(schema: dict[str, Any] | None) -> str | None:
    """Why `schema` is not a usable JSON Schema, or None when it is (or there is none)."""
    if not schema:
        return None
    try:
        _validator_class(schema).check_schema(schema)
    except jsonschema_errors.SchemaError as exc:
        where = _path("input_schema", exc.absolute_path)
        return f"{where}: {_short(exc.message)}"
    return None


def input_problem(validator: Validator, value: Any) -> tuple[str, str] | None:
    """The most relevant (field, message) of `value` against the schema, or None if it fits."""
    error = jsonschema_errors.best_match(validator.iter_errors(value))
    if error is None:
        return None
    field = _path("input", error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        # Name the missing field itself, not the object that lacks it.
        missing = [n for n in error.validator_value if n not in error.instance]
        if missing:
            return _path(field, [missing[0]]), "field required"
    return field, _short(error.message)


class InputValidators:
    """A compiled validator per workflow version."""

    def __init__(self) -> None:
        self._by_version: dict[str, Validator] = {}

    def check(self, version_id: str, spec: WorkflowSpec, value: Any) -> None:
        """Raise InputInvalid (422) naming the field when `value` does not fit the schema."""
        schema = spec.input_schema
        if not schema:
            return
        validator = self._by_version.get(version_id)
        if validator is None:
            if len(self._by_version) >= _MAX_CACHED:
                self._by_version.clear()
            validator = _validator_class(schema)(schema)
            self._by_version[version_id] = validator
        problem = input_problem(validator, value)
        if problem is not None:
            field, message = problem
            raise InputInvalid(detail=f"{field}: {message}", extra={"field": field})


def _path(root: str, parts: Iterable[str | int]) -> str:
    out = root
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _short(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 3] + "..."
