"""The celpy internals libs/common/cel/compat.py relies on, checked one by one.

cel-python is pinned to one minor in pyproject.toml. When an upgrade (or a widened pin)
changes any of these, the failing test names the assumption: adapt compat.py first. These
probes talk to celpy directly, so they still explain what broke when compat.py itself can no
longer be imported.
"""

from __future__ import annotations

import importlib.metadata
import re
from typing import Any

import celpy
import celpy.evaluation
import lark
import pytest
from celpy import celtypes
from celpy.celparser import CELParser
from celpy.evaluation import Activation, CELEvalError

VERSION = importlib.metadata.version("cel-python")


def _broken(assumption: str) -> str:
    return (
        f"cel-python {VERSION} broke an assumption of libs/common/cel/compat.py: {assumption}. "
        "Adapt compat.py before moving the cel-python pin in pyproject.toml."
    )


def _compiled_runner(expression: str) -> Any:
    """A stock CompiledRunner built with a parser of its own (as compat builds one)."""
    saved = getattr(CELParser, "CEL_PARSER", None)
    CELParser.CEL_PARSER = None
    try:
        env = celpy.Environment(runner_class=celpy.CompiledRunner)
        return env.program(env.compile(expression))
    finally:
        CELParser.CEL_PARSER = saved


def _source(expression: str) -> str:
    runner = _compiled_runner(expression)
    assert hasattr(runner, "tp") and isinstance(getattr(runner.tp, "source_text", None), str), (
        _broken("CompiledRunner.tp.source_text holds the transpiled module as a str"))
    text: str = runner.tp.source_text
    return text


def test_parser_is_one_class_attribute() -> None:
    assert "CEL_PARSER" in vars(CELParser), _broken(
        "celpy keeps its shared parser in the class attribute CELParser.CEL_PARSER")


def test_runner_executes_the_code_it_keeps() -> None:
    runner = _compiled_runner("1 + 2")
    assert hasattr(runner.tp, "executable_code"), _broken(
        "CompiledRunner.tp.executable_code holds the compiled transpiled module")
    source = runner.tp.source_text.replace("IntType(2)", "IntType(40)")
    runner.tp.source_text = source
    runner.tp.executable_code = compile(source, "<cel>", "exec")
    assert runner.evaluate({}) == 41, _broken(
        "CompiledRunner.evaluate runs tp.executable_code (compat rewrites it to fix has())")


def test_transpiled_module_shape() -> None:
    source = _source("input.x > 3 && [1, 2].exists(v, v in [2]) && input.s == 'a'")
    statements = [line for line in source.splitlines() if line and not line.startswith("#")]
    assert statements and statements[-1].startswith("CEL = "), _broken(
        "the transpiled module ends with `CEL = <expression>`")
    assert all(re.match(r"^\w+ = lambda activation: ", s) for s in statements[:-1]), _broken(
        "every statement before `CEL = ...` is `name = lambda activation: ...`")
    assert "celpy.celtypes.IntType(3)" in source, _broken(
        "literals are spelled `celpy.celtypes.IntType(3)` (compat hoists them as constants)")
    for helper in ("bool_gt", "macro_exists", "operator_in", "result"):
        assert f"celpy.evaluation.{helper}(" in source, _broken(
            f"transpiled code calls celpy.evaluation.{helper} (compat swaps in its own)")
    assert "activation.input" in source, _broken(
        "transpiled code reads variables as attributes of the activation")


def test_has_is_transpiled_to_a_python_bool() -> None:
    source = _source("has(input.x)")
    pattern = re.compile(r"^(ex_\d+) = lambda activation: (not isinstance\(.*\))$", re.M)
    assert pattern.search(source), _broken(
        "has() transpiles to `ex_N = lambda activation: not isinstance(...)` (compat wraps "
        "it in BoolType; if upstream fixed has(), drop that rewrite)")


def test_evaluation_helpers_exist() -> None:
    evaluation = celpy.evaluation
    for name in ("bool_lt", "bool_le", "bool_gt", "bool_ge", "bool_eq", "bool_ne",
                 "macro_exists", "macro_all", "operator_in", "boolean", "result"):
        assert callable(getattr(evaluation, name, None)), _broken(
            f"celpy.evaluation.{name} exists and is callable")
    assert isinstance(getattr(evaluation, "base_functions", None), dict), _broken(
        "celpy.evaluation.base_functions maps the standard function names")
    assert evaluation.boolean(lambda a, b: a < b)(celtypes.IntType(1), celtypes.IntType(2)), (
        _broken("celpy.evaluation.boolean(op) wraps a Python comparison into a CEL one"))


def test_activation_surface() -> None:
    env = celpy.Environment()
    base = Activation(annotations=env.annotations, package=env.package, functions=None)
    for name in ("functions", "package", "resolve_variable", "nested_activation"):
        assert hasattr(base, name), _broken(f"Activation has `{name}`")
    nested = base.nested_activation(vars={"v": celtypes.IntType(1)})
    assert nested.resolve_variable("v") == 1, _broken(
        "Activation.nested_activation(vars=...) binds a macro variable")


def test_evaluation_errors_carry_the_inner_reason() -> None:
    runner = _compiled_runner("input.x / 0")
    try:
        value = runner.evaluate({"input": celpy.json_to_cel({"x": 1})})
    except CELEvalError as exc:
        value = exc
    assert isinstance(value, CELEvalError), _broken("a runtime error is a CELEvalError")
    args = value.args
    assert len(args) >= 3 and isinstance(args[2], tuple) and args[2], _broken(
        "CELEvalError.args is (message, exception type, inner args)")
    assert args[2][0] == "divide by zero", _broken(
        "the inner args of an evaluation error start with the reason a user should read")


def test_cel_types_are_built_by_new_alone() -> None:
    for cel_type, value in ((celtypes.StringType, "a"), (celtypes.IntType, 7),
                            (celtypes.DoubleType, 1.5)):
        fast = cel_type.__mro__[1].__new__(cel_type, value)
        assert fast == cel_type(value) and type(fast) is cel_type, _broken(
            f"{cel_type.__name__} needs no work beyond __new__ (compat's to_cel skips it)")
    assert celtypes.MapType.__setitem__ is dict.__setitem__, _broken(
        "MapType does not override __setitem__ (compat's to_cel fills maps directly)")


def test_grammar_rule_names() -> None:
    env = celpy.Environment()
    tree = env.compile("has(input.x) && [1].exists(v, v > 0) && input.s.matches('a+')")
    rules = {node.data for node in tree.iter_subtrees()}
    for rule in ("member_dot_arg", "ident_arg", "ident", "exprlist", "literal",
                 "conditionaland", "relation"):
        assert rule in rules, _broken(f"the parse tree names the rule {rule!r} (sandbox checks)")
    tokens = {t.type for t in tree.scan_values(lambda v: isinstance(v, lark.Token))}
    assert any(t.endswith("STRING_LIT") for t in tokens), _broken(
        "string literals are *STRING_LIT tokens (the regex check reads them)")
    assert hasattr(tree.meta, "start_pos") and hasattr(tree.meta, "line"), _broken(
        "parse trees carry positions (start_pos/end_pos, line/column) for error messages")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("input.x > 3", (True, None)),
        ("input.s.startsWith('a') && 2 in input.l", (True, None)),
        ("input.l.exists(v, v == 3)", (True, None)),
        ("input.l.all(v, v < 3)", (False, None)),
        ("has(input.m.k) && input.m.k", (True, None)),
        ("input.missing == 1", (False, "no such member in mapping: 'missing'")),
    ],
)
def test_compat_fast_path_still_answers(expression: str, expected: tuple[bool, str | None]) -> None:
    # End to end through compat: if these change, the private access above no longer works.
    try:
        from libs.common.cel import compile_filter, to_cel
    except Exception as exc:  # only on a broken upgrade
        pytest.fail(_broken(f"libs.common.cel imports ({type(exc).__name__}: {exc})"))
    program = compile_filter(expression)
    assert program.entry is not None, _broken(
        f"compat's fast path takes {expression!r} (transpiled module shape)")
    data = {"x": 5, "s": "abc", "l": [1, 2, 3], "m": {"k": True}}
    assert program.evaluate({"input": to_cel(data)}) == expected, _broken(
        f"{expression!r} evaluates as it did on cel-python 0.5")
