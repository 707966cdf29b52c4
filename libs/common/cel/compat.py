"""Everything that depends on cel-python (`celpy`) below its documented API.

Pinned to one minor (pyproject: `cel-python>=0.5,<0.6`). What is relied on here, and checked
one assumption at a time by tests/unit/test_cel_compat.py so an upgrade fails loudly:

- `CELParser.CEL_PARSER`: the one parser celpy keeps per process (a class attribute);
- `CompiledRunner.tp.source_text` / `.executable_code`: the transpiled Python module;
- the shape of that module: `name = lambda activation: ...` statements, then `CEL = <expr>`,
  literals spelled `celpy.celtypes.IntType(3)`, has() spelled `not isinstance(...)`;
- the helpers the transpiled code calls in `celpy.evaluation` (`bool_*`, `macro_exists`,
  `macro_all`, `operator_in`, `boolean`, `result`) and `Activation`'s attributes;
- the args of `CELEvalError` (message, exception type, exception args);
- celtypes' scalar types taking their value from `__new__` (no `__init__` work), and MapType
  not overriding `__setitem__`.

Everything else in libs/common/cel uses celpy's public API only.
"""

from __future__ import annotations

import ast
import functools
import logging
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

import celpy
import celpy.evaluation
import lark
import lark.exceptions
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError, CELParser
from celpy.evaluation import Activation, CELEvalError

# celpy logs every evaluation error at ERROR level; a missing field is an ordinary outcome
# for us (recorded as a match error), so its own log line would only be noise.
logging.getLogger("celpy").setLevel(logging.CRITICAL)

BASE_FUNCTIONS = frozenset(celpy.evaluation.base_functions)

_HAS_LAMBDA = re.compile(r"^(ex_\d+) = lambda activation: (not isinstance\(.*\))$", re.M)


class Runner(celpy.CompiledRunner):
    """celpy's transpiled runner, with `has()` returning a CEL bool.

    Upstream (0.5) transpiles has() to a Python bool, which `&&`, `!` and `?:` then reject
    ("no such overload"); wrapping it in BoolType makes `has(input.x) && input.x` work.
    """

    def __init__(self, environment: celpy.Environment, ast: Any, functions: Any = None) -> None:
        super().__init__(environment, ast, functions)
        source = _HAS_LAMBDA.sub(
            r"\1 = lambda activation: celpy.celtypes.BoolType(\2)", self.tp.source_text
        )
        if source != self.tp.source_text:
            self.tp.source_text = source
            self.tp.executable_code = compile(source, "<cel>", "exec")

    @property
    def source_text(self) -> str:
        """The transpiled Python module this runner executes."""
        text: str = self.tp.source_text
        return text


def _private_environment() -> celpy.Environment:
    """An Environment whose parser builds the tree type the transpiler needs.

    celpy keeps ONE parser per process (a class attribute), built with the tree class of the
    first Environment created; an interpreted Environment created first elsewhere in the
    process would leave our compiled runner with trees it cannot transpile. So build our
    own parser and put the shared one back as it was.
    """
    saved = CELParser.CEL_PARSER
    CELParser.CEL_PARSER = None
    try:
        env = celpy.Environment(runner_class=Runner)
        private = CELParser.CEL_PARSER
    finally:
        CELParser.CEL_PARSER = saved
    env.cel_parser = _OwnParser(private)
    return env


class _OwnParser(CELParser):
    def __init__(self, parser: Any) -> None:
        self._parser = parser

    def parse(self, text: str) -> Any:
        self.text = text
        try:
            return self._parser.parse(text)
        except (lark.exceptions.UnexpectedToken, lark.exceptions.UnexpectedCharacters) as ex:
            raise CELParseError(ex.get_context(text), line=ex.line, column=ex.column) from ex
        except (lark.exceptions.LexError, lark.exceptions.ParseError) as ex:
            raise CELParseError(str(ex.args[0]).splitlines()[0]) from ex


ENV = _private_environment()
TRUE, FALSE = celtypes.BoolType(True), celtypes.BoolType(False)


# ------------------------------------------------------------------ cheaper evaluation
#
# celpy's CompiledRunner.evaluate, per call: deep-copies an Activation, loads the variables
# into it (a regex match per name), exec()s the whole transpiled module (re-creating every
# lambda and every constant), resolves each variable through NameContainer's package search,
# and its bool_* helpers rebuild a functools.wraps wrapper on every comparison. None of that
# is semantics: it is the same code run with less set-up. Below, the transpiled statements
# run once per program, constants are built once, variables are a dict lookup, and the
# helpers that rebuilt themselves per call are built once. Expressions still evaluate through
# celpy's own operators, types and error handling, so results are celpy's.


class Bindings(Activation):
    """The variables of one evaluation, as plain instance attributes.

    Transpiled code reads `activation.input`: kept in the instance dict, that is an ordinary
    attribute hit, with no `__getattr__` call. Build one per event and `bind("payload", ...)`
    per filter: nothing is copied per filter. A macro's nested bindings hold its variable and
    defer to their parent; names bound nowhere fall back to the environment's activation (type
    annotations, functions), exactly where celpy would find them.
    """

    __slots__ = ("_parent",)
    # Class-level so the instance dict holds nothing but variables; same values as celpy's.
    functions = None  # type: ignore[assignment]  # set below, from the base activation
    package: str | None = None

    def __init__(self, values: Mapping[str, Any], parent: Bindings | None = None) -> None:
        # Deliberately not calling Activation.__init__: that builds the NameContainer we skip.
        self._parent = parent
        self.__dict__.update(values)

    def bind(self, name: str, value: Any) -> None:
        """Set (or replace) one variable."""
        self.__dict__[name] = value

    def variables(self) -> dict[str, Any]:
        """The variables bound at this level (not a copy)."""
        return self.__dict__

    def _lookup(self, name: str) -> Any:
        scope: Bindings | None = self
        while scope is not None:
            values = scope.__dict__
            if name in values:
                return values[name]
            scope = scope._parent
        raise KeyError(name)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names not bound here: a macro's parent scopes, then the environment.
        try:
            return self._lookup(name)
        except KeyError:
            return getattr(_BASE_ACTIVATION, name)

    get = __getattr__

    def resolve_variable(self, name: str) -> Any:
        try:
            return self._lookup(name)
        except KeyError:
            return _BASE_ACTIVATION.resolve_variable(name)

    def nested_activation(
        self, annotations: Mapping[str, Any] | None = None, vars: Mapping[str, Any] | None = None
    ) -> Bindings:
        if annotations:  # the transpiler never passes any; refuse rather than ignore them
            raise TypeError("Bindings cannot take annotations")
        return Bindings(vars or {}, self)


_BASE_ACTIVATION = Activation(
    annotations=ENV.annotations, package=ENV.package, functions=None
)
Bindings.functions = _BASE_ACTIVATION.functions  # type: ignore[assignment]
Bindings.package = _BASE_ACTIVATION.package

# Names an expression may not use as a macro variable: on an Activation they are attributes
# (methods, `functions`, `package`), which celpy would return instead of the variable. Names
# starting with "_" are refused as well (internals).
RESERVED_NAMES = frozenset(n for n in dir(Bindings) if not n.startswith("_")) | {"identifiers"}


def _reduce_macro(
    combine: Callable[[Any, Any], Any], start: Any
) -> Callable[[Activation, str, Callable[[Activation], Any], Callable[[Activation], Any]], Any]:
    """celpy's exists()/all(): fold every element's result (no early exit, as celpy does).

    Upstream spells a typing cast with a subscripted Callable inside the function, which
    costs more than the fold itself on short lists.
    """
    evaluation = celpy.evaluation

    def macro(activation: Activation, bind_variable: str,
              cel_expr: Callable[[Activation], Any], cel_gen: Callable[[Activation], Any]) -> Any:
        results = (
            evaluation.result(activation.nested_activation(vars={bind_variable: value}), cel_expr)
            for value in cel_gen(activation)
        )
        return celtypes.BoolType(functools.reduce(combine, results, celtypes.BoolType(start)))

    return macro


def _operator_in(item: Any, container: Any) -> Any:
    """celpy's `in`, minus a typing cast that subscripts a large Union on every call.

    True on the first equal element; otherwise False, or a "no such overload" error when
    some comparison was a type error. Errors in either operand propagate.
    """
    if isinstance(item, CELEvalError):
        return item
    if isinstance(container, CELEvalError):
        return container
    outcome: Any = FALSE
    for candidate in container:
        try:
            if candidate == item:
                return TRUE
        except TypeError as exc:
            outcome = CELEvalError("no such overload", exc.__class__, exc.args)
    return outcome


class _Namespace:
    """A module stand-in: the real module's names, some replaced, the rest passed through."""

    def __init__(self, module: Any, **replaced: Any) -> None:
        self.__dict__.update(vars(module))
        self.__dict__.update(replaced)
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


_boolean = celpy.evaluation.boolean
_EVALUATION = _Namespace(
    celpy.evaluation,
    # Upstream's bool_eq(a, b) is `boolean(operator.eq)(a, b)`: the same wrapper, built once.
    bool_lt=_boolean(operator.lt), bool_le=_boolean(operator.le),
    bool_gt=_boolean(operator.gt), bool_ge=_boolean(operator.ge),
    bool_eq=_boolean(operator.eq), bool_ne=_boolean(operator.ne),
    macro_exists=_reduce_macro(celtypes.logical_or, False),
    macro_all=_reduce_macro(celtypes.logical_and, True),
    operator_in=_operator_in,
)
_GLOBALS: dict[str, Any] = {
    **vars(celpy.evaluation),
    "celpy": _Namespace(celpy, evaluation=_EVALUATION),
}
# Literal constructors whose value depends only on their literal argument (and is immutable).
_CONSTANT_TYPES = frozenset({"StringType", "IntType", "UintType", "DoubleType", "BoolType",
                             "BytesType"})


class _HoistConstants(ast.NodeTransformer):
    """`celpy.celtypes.IntType(3)` → a name bound once to that value."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace

    def visit_Call(self, node: ast.Call) -> Any:
        self.generic_visit(node)
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr in _CONSTANT_TYPES
                and ast.unparse(func.value) == "celpy.celtypes" and not node.keywords
                and all(isinstance(a, ast.Constant) for a in node.args)):
            return node
        try:
            value = getattr(celtypes, func.attr)(*(a.value for a in node.args))  # type: ignore[attr-defined]
        except Exception:
            return node  # fails at run time too: leave it there, where celpy reports it
        name = f"_k{len(self.namespace)}"
        self.namespace[name] = value
        return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), node)


def entry_point(source: str) -> Callable[[Activation], Any] | None:
    """Run the transpiled statements once; return `activation -> value`, or None if the
    source is not the expected shape (lambda definitions, then `CEL = <expr>`)."""
    module = ast.parse(source)
    *definitions, last = module.body
    if not (isinstance(last, ast.Assign) and len(last.targets) == 1
            and isinstance(last.targets[0], ast.Name) and last.targets[0].id == "CEL"):
        return None
    if not all(isinstance(d, ast.Assign) and isinstance(d.value, ast.Lambda) for d in definitions):
        return None
    constants: dict[str, Any] = {}
    hoisted = _HoistConstants(constants)
    body: list[ast.stmt] = [hoisted.visit(d) for d in definitions]
    entry = ast.parse("def _cel_entry(base_activation):\n    return None").body[0]
    assert isinstance(entry, ast.FunctionDef)
    entry.body = [ast.Return(hoisted.visit(last.value))]
    body.append(entry)
    code = compile(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[])),
                   "<cel>", "exec")
    namespace = {**_GLOBALS, **constants}
    exec(code, namespace)
    function: Callable[[Activation], Any] = namespace["_cel_entry"]
    return function


def eval_reason(exc: CELEvalError) -> str:
    """The human part of a CELEvalError: the inner exception's message when there is one."""
    args = exc.args
    if len(args) >= 3 and isinstance(args[2], tuple) and args[2]:
        inner = args[2][0]
        if isinstance(inner, str):
            return inner
    return str(args[0]) if args else "evaluation error"


_S, _I, _D = celtypes.StringType, celtypes.IntType, celtypes.DoubleType
_INT64_MIN, _INT64_MAX = -(2**63), 2**63
_str_new, _int_new, _float_new = str.__new__, int.__new__, float.__new__
_set = dict.__setitem__  # MapType does not override it


def to_cel(value: Any) -> Any:
    """JSON-shaped Python data → CEL values (done once per event, not per filter).

    Same result as celpy's json_to_cel, about 6x faster: the celtypes constructors re-check
    (and for ints, re-wrap) every value, which JSON from msgspec never needs.
    """
    t = type(value)
    if t is str:
        return _str_new(_S, value)
    if t is dict:
        out = celtypes.MapType()
        for k, v in value.items():
            _set(out, _str_new(_S, k), to_cel(v))
        return out
    if t is int:
        return _int_new(_I, value) if _INT64_MIN <= value < _INT64_MAX else _I(value)
    if t is bool:
        return TRUE if value else FALSE
    if t is float:
        return _float_new(_D, value)
    if t is list:
        return celtypes.ListType([to_cel(v) for v in value])
    if value is None:
        return None
    return json_to_cel(value)
