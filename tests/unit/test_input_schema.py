"""Run input validation against a workflow's input_schema (the jsonschema library)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from libs.common.specs import TaskSpec, WorkflowSpec
from services.api.input_schema import InputInvalid, InputValidators, schema_problem


def _spec(schema: dict[str, Any]) -> WorkflowSpec:
    return WorkflowSpec(name="wf", tasks=[TaskSpec(name="t")], input_schema=schema)


def _problem(schema: dict[str, Any], value: Any) -> str | None:
    """The 422 detail for `value`, or None when it is accepted."""
    try:
        InputValidators().check("wv_test", _spec(schema), value)
    except InputInvalid as exc:
        assert exc.status_code == 422
        return str(exc.detail)
    return None


ONE_OF = {
    "type": "object",
    "properties": {"n": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 10}]}},
}


def test_one_of_accepts_exactly_one_match() -> None:
    assert _problem(ONE_OF, {"n": 3}) is None  # an integer below 10: only the first matches
    assert _problem(ONE_OF, {"n": 10.5}) is None  # a float: only the second matches


def test_one_of_rejects_a_value_matching_two_options() -> None:
    # 12 is an integer and a number >= 10: oneOf (unlike anyOf) must refuse it.
    detail = _problem(ONE_OF, {"n": 12})
    assert detail is not None and detail.startswith("input.n: ")
    assert "valid under each of" in detail


def test_one_of_rejects_a_value_matching_none() -> None:
    detail = _problem(ONE_OF, {"n": "x"})
    assert detail is not None and detail.startswith("input.n: ")


def test_minimum_and_exclusive_maximum() -> None:
    schema = {"type": "object", "properties": {
        "pages": {"type": "integer", "minimum": 1, "exclusiveMaximum": 100}}}
    assert _problem(schema, {"pages": 1}) is None
    assert _problem(schema, {"pages": 0}) == "input.pages: 0 is less than the minimum of 1"
    detail = _problem(schema, {"pages": 100})
    assert detail is not None and detail.startswith("input.pages: 100 is greater than")


def test_pattern() -> None:
    schema = {"type": "object", "properties": {"doc_id": {"type": "string", "pattern": "^d-[0-9]+$"}}}
    assert _problem(schema, {"doc_id": "d-42"}) is None
    assert _problem(schema, {"doc_id": "42"}) == "input.doc_id: '42' does not match '^d-[0-9]+$'"


def test_required_names_the_missing_field() -> None:
    schema = {"type": "object", "required": ["doc_id", "pages"],
              "properties": {"doc_id": {"type": "string"}, "pages": {"type": "integer"}}}
    assert _problem(schema, {"doc_id": "x"}) == "input.pages: field required"


def test_nested_paths_name_list_items() -> None:
    schema = {"type": "object", "properties": {"docs": {"type": "array", "items": {
        "type": "object", "properties": {"pages": {"type": "integer"}}}}}}
    detail = _problem(schema, {"docs": [{"pages": 1}, {"pages": True}]})
    assert detail == "input.docs[1].pages: True is not of type 'integer'"


def test_schema_generated_by_msgspec_with_refs() -> None:
    # What the SDK sends for a msgspec Struct input: a $ref into $defs.
    class Doc(msgspec.Struct):
        doc_id: str
        pages: int

    schema = msgspec.json.schema(Doc)
    assert "$ref" in schema
    assert _problem(schema, {"doc_id": "a", "pages": 2}) is None
    assert _problem(schema, {"doc_id": "a"}) == "input.pages: field required"
    assert _problem(schema, {"doc_id": "a", "pages": "2"}) == "input.pages: '2' is not of type 'integer'"


def test_long_values_are_cut_from_messages() -> None:
    schema = {"type": "object", "properties": {"s": {"type": "integer"}}}
    detail = _problem(schema, {"s": "x" * 10_000})
    assert detail is not None and len(detail) < 400 and detail.endswith("...")


def test_no_schema_accepts_anything() -> None:
    validators = InputValidators()
    validators.check("wv_none", WorkflowSpec(name="wf", tasks=[TaskSpec(name="t")]), {"any": 1})


@pytest.mark.parametrize(
    ("schema", "fragment"),
    [
        ({"type": "objekt"}, "input_schema.type: 'objekt' is not valid"),
        ({"properties": {"n": {"minimum": "one"}}}, "input_schema.properties.n.minimum: 'one'"),
    ],
)
def test_a_broken_schema_is_reported_at_registration(schema: dict[str, Any], fragment: str) -> None:
    problem = schema_problem(schema)
    assert problem is not None and problem.startswith(fragment)


def test_a_good_schema_has_no_problem() -> None:
    assert schema_problem(ONE_OF) is None
    assert schema_problem(None) is None
