"""Turning user inputs/outputs into JSON and back into the declared types."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

_ENC = msgspec.json.Encoder()


def to_builtins(value: Any) -> Any:
    """msgspec Struct, dataclass, pydantic model or plain data → JSON-compatible data."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return msgspec.to_builtins(value)


def dumps(value: Any) -> bytes:
    """`value` as JSON. msgspec encodes what `to_builtins` accepts directly, to the same bytes;
    going through builtins first would copy every `bytes` value as a base64 string."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _ENC.encode(dump(mode="json"))
    return _ENC.encode(value)


def loads(raw: bytes | bytearray) -> Any:
    return msgspec.json.decode(raw) if raw else None


def convert(data: Any, type_: Any) -> Any:
    """Plain data → the task's declared input type (dict when none was declared)."""
    if type_ is None or type_ is dict or type_ is Any:
        return data
    validate = getattr(type_, "model_validate", None)
    if callable(validate):
        return validate(data)
    return msgspec.convert(data, type_)


def json_schema(type_: Any) -> dict[str, Any] | None:
    """A JSON schema for the input type, so the API can reject bad input with a 422."""
    if type_ is None or type_ is dict or type_ is Any:
        return None
    schema_fn = getattr(type_, "model_json_schema", None)
    if callable(schema_fn):
        result: dict[str, Any] = schema_fn()
        return result
    if isinstance(type_, type) and (
        issubclass(type_, msgspec.Struct) or dataclasses.is_dataclass(type_)
    ):
        return msgspec.json.schema(type_)
    return None
