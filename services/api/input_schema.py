"""Run input checked against the workflow's declared input schema (JSON Schema subset)."""

from __future__ import annotations

from typing import Any

from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_422_UNPROCESSABLE_ENTITY

from libs.common.specs import WorkflowSpec

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


class InputInvalid(HTTPException):
    status_code = HTTP_422_UNPROCESSABLE_ENTITY


def check_input(spec: WorkflowSpec, value: Any) -> None:
    """Raise 422 naming the field when `value` does not fit the schema."""
    schema = spec.input_schema
    if not schema:
        return
    problem = _check(schema, schema, value, "input")
    if problem is not None:
        field, message = problem
        raise InputInvalid(detail=f"{field}: {message}", extra={"field": field})


def _resolve(root: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}
    return schema


def _check(root: dict[str, Any], schema: dict[str, Any], value: Any, path: str) -> tuple[str, str] | None:
    schema = _resolve(root, schema)
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        for option in options:
            if _check(root, option, value, path) is None:
                return None
        return path, "does not match any allowed type"
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _TYPES:
        if isinstance(value, bool) and kind in ("integer", "number"):
            return path, f"expected {kind}, got boolean"
        if not isinstance(value, _TYPES[kind]):
            return path, f"expected {kind}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return path, f"must be one of {schema['enum']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                return f"{path}.{name}", "field required"
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in value:
                found = _check(root, sub, value[name], f"{path}.{name}")
                if found is not None:
                    return found
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found = _check(root, schema["items"], item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
