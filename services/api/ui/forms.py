"""A run's trigger form generated from the workflow's input JSON schema, and read back.

Top-level properties of an object schema become fields (text, number, checkbox, select for
an enum); anything nested is a JSON text area. Without a schema the form is one JSON area.
The values read back are checked by the REST trigger itself (`check_input`), so a bad value
comes back with the same message the API gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

PREFIX = "in."
RAW = "input_json"


@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # text | integer | number | boolean | select | json
    required: bool
    description: str
    options: tuple[str, ...] = ()
    value: str = ""


def _resolve(root: dict[str, Any], schema: Any) -> dict[str, Any]:
    if not isinstance(schema, dict):
        return {}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}
    return schema


def _kind(prop: dict[str, Any]) -> str:
    if "enum" in prop and all(isinstance(v, str) for v in prop["enum"]):
        return "select"
    kind = prop.get("type")
    if kind == "string":
        return "text"
    if kind in ("integer", "number", "boolean"):
        return str(kind)
    return "json"


def fields(schema: dict[str, Any] | None, values: dict[str, str] | None = None) -> list[Field]:
    """Form fields for the schema's top-level properties; [] when it has none."""
    values = values or {}
    root = schema or {}
    top = _resolve(root, root)
    props = top.get("properties")
    if top.get("type") not in (None, "object") or not isinstance(props, dict) or not props:
        return []
    required = set(top.get("required", []))
    out = []
    for name, raw in props.items():
        prop = _resolve(root, raw)
        kind = _kind(prop)
        out.append(Field(
            name=name, kind=kind, required=name in required,
            description=str(prop.get("description") or prop.get("title") or ""),
            options=tuple(prop.get("enum", ())) if kind == "select" else (),
            value=values.get(PREFIX + name, ""),
        ))
    return out


class FormError(ValueError):
    """A field the user filled that cannot be read (the message names it)."""


def read_input(schema: dict[str, Any] | None, form: dict[str, list[str]]) -> Any:
    """The run input from a submitted form (typed fields, or the raw JSON area)."""
    schema_fields = fields(schema)
    if not schema_fields or (form.get("mode") or [""])[0] == "json":
        raw = (form.get(RAW) or [""])[0].strip()
        if not raw:
            return {}
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise FormError(f"input: not valid JSON ({exc})") from exc
    out: dict[str, Any] = {}
    for f in schema_fields:
        values = form.get(PREFIX + f.name) or []
        if f.kind == "boolean":
            out[f.name] = bool(values) and values[-1] == "true"
            continue
        text = values[0].strip() if values else ""
        if not text:
            continue  # left empty: absent (the schema check names it if it is required)
        try:
            if f.kind == "integer":
                out[f.name] = int(text)
            elif f.kind == "number":
                out[f.name] = float(text)
            elif f.kind == "json":
                out[f.name] = msgspec.json.decode(text)
            else:
                out[f.name] = text
        except (ValueError, msgspec.DecodeError) as exc:
            raise FormError(f"input.{f.name}: cannot read {text!r} as {f.kind}") from exc
    return out


def read_metadata(text: str) -> dict[str, str]:
    """`key:value` pairs separated by commas or new lines."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.replace("\n", ",").split(","))):
        key, sep, value = pair.partition(":")
        if not sep or not key.strip():
            raise FormError(f"metadata: {pair!r} is not key:value")
        out[key.strip()] = value.strip()
    return out
