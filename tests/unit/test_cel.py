"""CEL filters: compile-time checks name positions, evaluation never raises."""

from __future__ import annotations

import dataclasses
from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel
from celpy.celparser import CELParser
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.cel import (
    MAX_EXPRESSION_CHARS,
    Bindings,
    CelError,
    EvaluationError,
    check_expression,
    compile_expression,
    compile_filter,
    to_cel,
)


def _activation(input: Any, payload: Any = None, metadata: Any = None, key: str = "k") -> dict[str, Any]:
    return {"input": to_cel(input), "payload": to_cel(payload),
            "metadata": to_cel(metadata or {}), "event_key": to_cel(key)}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=50, deadline=None)
@given(a=st.integers(-10**9, 10**9), b=st.integers(-10**9, 10**9))
def test_comparison_agrees_with_python(a: int, b: int) -> None:
    program = compile_filter("input.a < input.b && payload.flag")
    assert program.evaluate(_activation({"a": a, "b": b}, {"flag": True})) == (a < b, None)


@settings(max_examples=50, deadline=None)
@given(value=json_values)
def test_evaluation_never_raises(value: Any) -> None:
    program = compile_filter("input.user.name == 'ann' || size(input) > 2")
    matched, error = program.evaluate(_activation(value))
    assert isinstance(matched, bool)
    assert error is None or isinstance(error, str)


@settings(max_examples=50, deadline=None)
@given(text=st.text(alphabet="input.()[]{}'\"!=<>&|+-*/ 0123456789abcxyz\n", max_size=60))
def test_compile_fails_only_with_cel_error(text: str) -> None:
    try:
        compile_filter(text)
    except CelError as exc:
        assert exc.line >= 1 and exc.column >= 1
        assert str(exc).startswith(f"line {exc.line}, column {exc.column}: ")


@pytest.mark.parametrize(
    ("expression", "line", "column", "fragment"),
    [
        ("input.user ==", 1, 12, "syntax error"),
        ("input.a &&\n  input.b ==", 2, 11, "syntax error"),
        ("input.a > 1 && (2 + 'x') == 3", 1, 17, "type error"),
        ("user.name == 'x'", 1, 1, "unknown variable 'user'"),
        ("input.a && shout(input.b)", 1, 12, "unknown function 'shout'"),
        ("input.l.exists(x, input.m.all(y, y > x))", 1, 19, "nested comprehensions"),
        ("input.s.matches('(a+)+$')", 1, 1, "nested quantifiers"),
        ("input.s.matches(input.p)", 1, 1, "literal pattern"),
        ("(" * 40 + "true" + ")" * 40, 1, 33, "nest deeper"),
        ("", 1, 1, "empty"),
    ],
)
def test_compile_errors_name_the_position(
    expression: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(CelError) as info:
        compile_filter(expression)
    assert (info.value.line, info.value.column) == (line, column)
    assert fragment in str(info.value)


def test_expression_size_is_bounded() -> None:
    with pytest.raises(CelError, match="longer than"):
        compile_filter("input.a == 1 || " * (MAX_EXPRESSION_CHARS // 10) + "true")


@pytest.mark.parametrize(
    ("expression", "input", "expected"),
    [
        ("input.user != 'bot'", {"user": "ann"}, (True, None)),
        ("input.items.exists(i, i.price > 10)", {"items": [{"price": 3}, {"price": 12}]}, (True, None)),
        ("event_key.startsWith('doc.') && metadata.src == 'cli'", {}, (True, None)),
        ("has(input.opt) && input.opt", {}, (False, None)),
        ("has(input.opt) && input.opt", {"opt": True}, (True, None)),
        ("!has(input.opt) ? true : input.opt", {"opt": False}, (False, None)),
        ("input.s.matches('^a[0-9]+$')", {"s": "a12"}, (True, None)),
    ],
)
def test_evaluation(expression: str, input: dict[str, Any], expected: tuple[bool, None]) -> None:
    act = _activation(input, metadata={"src": "cli"}, key="doc.up")
    assert compile_filter(expression).evaluate(act) == expected


def test_runtime_errors_are_no_match_with_reason() -> None:
    matched, error = compile_filter("input.missing.deep == 1").evaluate(_activation({}))
    assert matched is False and error is not None and "missing" in error
    matched, error = compile_filter("input.n + 1").evaluate(_activation({"n": 1}))
    assert matched is False and error is not None and "not bool" in error


def test_other_celpy_users_do_not_break_compiled_filters() -> None:
    # celpy shares one parser per process; an interpreted Environment made elsewhere (before
    # or after us) must not change the trees our compiled runner gets.
    saved = CELParser.CEL_PARSER
    CELParser.CEL_PARSER = None
    try:
        other = celpy.Environment()
        assert other.program(other.compile("1 < 2")).evaluate({})
        assert compile_filter("has(input.a) && input.a > 1").evaluate(_activation({"a": 2})) == (
            True, None)
    finally:
        CELParser.CEL_PARSER = saved


@settings(max_examples=50, deadline=None)
@given(value=json_values | st.floats(allow_nan=False) | st.integers(-(2**63), 2**63 - 1))  # CEL ints are 64-bit
def test_to_cel_agrees_with_celpy(value: Any) -> None:
    assert repr(to_cel(value)) == repr(json_to_cel(value))


# The matcher evaluates through Program.entry (statements run once, constants built once,
# dict-backed bindings); the runner path is stock celpy. Both must agree on every outcome,
# errors and their reasons included.
AGREEMENT_EXPRESSIONS = [
    "input.a == 1",
    "input.a != 'x' && input.b > 2",
    "input.a < input.b || payload.flag",
    "input.a + 1 > 3",
    "input.a * 9223372036854775807 > 1",
    "10 / input.a == 2",
    "input.a % 3 == 1",
    "input.s.startsWith('ab') || input.s.endsWith('z')",
    "input.s.contains('b') && size(input.s) > 1",
    "input.s.matches('^a[0-9]*$')",
    "input.a in [1, 2, 'x']",
    "'k' in input",
    "input.l.exists(v, v == 1)",
    "input.l.all(v, v > 0)",
    "input.l.exists_one(v, v == 'x')",
    "input.l.map(v, v).size() >= 0",
    "input.l.filter(v, v == true).size() == 1",
    "has(input.a) && input.a == 1",
    "!has(input.a) ? payload.flag : input.b == 2",
    "has(input.l) && size(input.l) == 2",
    "input.a",
    "int(input.s) > 3",
    "string(input.a) == '1'",
    "double(input.a) > 0.5",
    "type(input.a) == type(1)",
    "event_key.endsWith('.up') && metadata.src == 'cli'",
    "dyn(input.a) == 1.0",
    "input.m.x.y == 1",
    "{'a': 1}[input.s] == 1",
    "[1, 2, 3][input.a] == 2",
]

agreement_inputs = st.fixed_dictionaries({}, optional={
    "a": json_values | st.integers(-5, 5), "b": json_values | st.integers(-5, 5),
    "s": st.sampled_from(["", "a1", "ab", "abz", "3", "x"]) | st.text(max_size=4),
    "l": st.lists(st.integers(-2, 2) | st.sampled_from(["x", True]), max_size=4),
    "m": json_values, "k": json_values,
})


@settings(max_examples=2 * settings().max_examples, deadline=None)
@given(expression=st.sampled_from(AGREEMENT_EXPRESSIONS), value=agreement_inputs,
       flag=st.booleans() | st.none())
def test_fast_evaluation_agrees_with_celpy_runner(
    expression: str, value: dict[str, Any], flag: bool | None
) -> None:
    program = compile_filter(expression)
    assert program.entry is not None
    reference = dataclasses.replace(program, entry=None)
    act = _activation(value, {"flag": flag}, {"src": "cli"}, "doc.up")
    assert program.evaluate(act) == reference.evaluate(act)


def test_bindings_are_reused_across_filters() -> None:
    bindings = Bindings({"input": to_cel({"n": 2}), "metadata": to_cel({}),
                         "event_key": to_cel("k")})
    high = compile_filter("input.n > payload.min")
    bindings.bind("payload", to_cel({"min": 1}))
    assert high.evaluate(bindings) == (True, None)
    bindings.bind("payload", to_cel({"min": 5}))
    assert high.evaluate(bindings) == (False, None)
    # A macro variable is local to its comprehension, never left behind in the bindings.
    assert compile_filter("[1, 2].exists(x, x == input.n)").evaluate(bindings) == (True, None)
    assert "x" not in bindings.variables()


def test_macro_variables_may_not_shadow_activation_attributes() -> None:
    with pytest.raises(CelError, match="reserved"):
        compile_filter("input.l.exists(functions, functions == 1)")


def test_key_expressions_give_values_or_say_why_not() -> None:
    # Keys and unit counts (scheduler) and the API's check share one compiler and cache.
    assert check_expression("input.user") is None
    assert check_expression("input.user +") == "line 1, column 12: syntax error near '+'"
    assert compile_expression("input.user") is compile_expression("input.user")
    program = compile_expression("input.n * 2")
    assert program.value({"input": to_cel({"n": 21})}) == 42
    with pytest.raises(EvaluationError, match="no such member in mapping: 'n'"):
        program.value({"input": to_cel({})})
