"""CEL event filters: compile once with sandbox limits, evaluate many times.

Filters are compiled when they are created (the API rejects bad ones with a position) and
again, once, when the matcher first loads them. Evaluation never raises: a runtime error
(a missing field, a type mismatch on real data) is an outcome, counted as no match.
"""

from __future__ import annotations

import ast
import functools
import logging
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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

MAX_EXPRESSION_CHARS = 2000
MAX_NODES = 2000
MAX_BRACKET_DEPTH = 32
MAX_MACROS = 4
MAX_REGEX_CHARS = 200

VARIABLES = frozenset({"input", "payload", "metadata", "event_key"})
MACROS = frozenset({"map", "filter", "all", "exists", "exists_one"})
FUNCTIONS = frozenset(celpy.evaluation.base_functions) | {"has", "dyn"}
# A quantified group that itself contains a quantifier, e.g. (a+)+ : catastrophic backtracking
# in Python's re (CEL's RE2 would be linear, but we run on re).
_NESTED_QUANTIFIER = re.compile(r"\([^)]*[+*}][^)]*\)\s*[+*{]")

_HAS_LAMBDA = re.compile(r"^(ex_\d+) = lambda activation: (not isinstance\(.*\))$", re.M)


class _Runner(celpy.CompiledRunner):
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
        env = celpy.Environment(runner_class=_Runner)
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


_ENV = _private_environment()
_TRUE, _FALSE = celtypes.BoolType(True), celtypes.BoolType(False)


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
        self.__dict__[name] = value

    def variables(self) -> dict[str, Any]:
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
    annotations=_ENV.annotations, package=_ENV.package, functions=None
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
    outcome: Any = _FALSE
    for candidate in container:
        try:
            if candidate == item:
                return _TRUE
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


def _entry_point(source: str) -> Callable[[Activation], Any] | None:
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


class CelError(ValueError):
    """An expression that cannot become a filter; the message names line and column."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.reason = message


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled, sandbox-checked filter expression."""

    expression: str
    runner: celpy.Runner
    entry: Callable[[Activation], Any] | None = None  # None: evaluate through the runner

    def evaluate(self, activation: Bindings | Mapping[str, Any]) -> tuple[bool, str | None]:
        """(matched, error). Errors (missing fields, wrong types, non-bool) never raise."""
        try:
            value = self._value(activation)
        except CELEvalError as exc:
            return False, _eval_reason(exc)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if isinstance(value, CELEvalError):
            return False, _eval_reason(value)
        if isinstance(value, celtypes.BoolType):
            return bool(value), None
        return False, f"expression returned {type(value).__name__}, not bool"

    def _value(self, activation: Bindings | Mapping[str, Any]) -> Any:
        if self.entry is None:
            variables = activation.variables() if isinstance(activation, Bindings) else activation
            return self.runner.evaluate(dict(variables))
        bindings = activation if isinstance(activation, Bindings) else Bindings(activation)
        # Error handling as in celpy's Transpiler.evaluate, so reasons read the same.
        try:
            value = self.entry(bindings)
            if isinstance(value, CELEvalError):
                raise value
            return value
        except Exception as exc:
            raise CELEvalError("evaluation error", type(exc), exc.args) from exc


def compile_filter(expression: str) -> Program:
    """Parse, sandbox-check and compile. Raises CelError naming the position of the problem."""
    if not expression.strip():
        raise CelError("expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CelError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    _check_bracket_depth(expression)
    try:
        ast = _ENV.compile(expression)
    except CELParseError as exc:
        line, column = exc.line or 1, exc.column or 1
        raise CelError(f"syntax error {_near(expression, line, column)}", line, column) from exc
    except RecursionError as exc:
        raise CelError("expression nests too deeply") from exc
    _check_tree(ast)
    _check_constants(expression, ast)
    try:
        runner = _ENV.program(ast)
    except Exception as exc:  # transpiler rejects something the grammar allowed
        raise CelError(f"cannot compile: {exc}") from exc
    assert isinstance(runner, _Runner)
    return Program(expression, runner, _entry_point(runner.tp.source_text))


_S, _B, _I, _D = celtypes.StringType, celtypes.BoolType, celtypes.IntType, celtypes.DoubleType
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
        return _TRUE if value else _FALSE
    if t is float:
        return _float_new(_D, value)
    if t is list:
        return celtypes.ListType([to_cel(v) for v in value])
    if value is None:
        return None
    return json_to_cel(value)


def _near(text: str, line: int, column: int) -> str:
    lines = text.splitlines() or [""]
    rest = lines[min(line, len(lines)) - 1][column - 1 :].strip()
    return f"near {rest[:20]!r}" if rest else "at end of expression"


def _eval_reason(exc: CELEvalError) -> str:
    args = exc.args
    if len(args) >= 3 and isinstance(args[2], tuple) and args[2]:
        inner = args[2][0]
        if isinstance(inner, str):
            return inner
    return str(args[0]) if args else "evaluation error"


def _check_bracket_depth(text: str) -> None:
    # The parser is recursive: refuse pathological nesting before it can exhaust the stack.
    depth = 0
    line, column = 1, 0
    for ch in text:
        column += 1
        if ch == "\n":
            line, column = line + 1, 0
        elif ch in "([{":
            depth += 1
            if depth > MAX_BRACKET_DEPTH:
                raise CelError(f"brackets nest deeper than {MAX_BRACKET_DEPTH}", line, column)
        elif ch in ")]}":
            depth -= 1


def _pos(tree: lark.Tree[Any]) -> tuple[int, int]:
    meta = tree.meta
    return getattr(meta, "line", 1), getattr(meta, "column", 1)


def _first_token(tree: lark.Tree[Any]) -> str:
    for child in tree.children:
        if isinstance(child, lark.Token):
            return str(child)
    return ""


def _check_tree(ast: lark.Tree[Any]) -> None:
    """Names, functions and cost: unknown variables/functions and unbounded shapes fail here."""
    nodes = 0
    macros: list[lark.Tree[Any]] = []
    macro_vars: set[str] = set()
    for node in ast.iter_subtrees_topdown():
        nodes += 1
        if nodes > MAX_NODES:
            raise CelError(f"expression has more than {MAX_NODES} syntax nodes", *_pos(node))
        if node.data == "member_dot_arg":
            method = _first_token(node)
            if method in MACROS:
                macros.append(node)
                var = _macro_var(node)
                if var and (var in RESERVED_NAMES or var.startswith("_")):
                    raise CelError(f"{var!r} is reserved; pick another variable name", *_pos(node))
                if var:
                    macro_vars.add(var)
            elif method not in FUNCTIONS:
                raise CelError(f"unknown function {method!r}", *_pos(node))
            if method == "matches":
                _check_regex(node)
        elif node.data == "ident_arg":
            name = _first_token(node)
            if name not in FUNCTIONS:
                raise CelError(f"unknown function {name!r}", *_pos(node))
            if name == "matches":
                _check_regex(node)
    if len(macros) > MAX_MACROS:
        raise CelError(f"more than {MAX_MACROS} comprehensions (map/filter/all/exists)",
                       *_pos(macros[MAX_MACROS]))
    for macro in macros:
        for inner in macro.iter_subtrees():
            if inner is not macro and inner in macros:
                raise CelError("nested comprehensions are not allowed (cost)", *_pos(inner))
    allowed = VARIABLES | macro_vars
    for node in ast.iter_subtrees_topdown():
        if node.data == "ident":
            name = _first_token(node)
            if name not in allowed:
                raise CelError(
                    f"unknown variable {name!r} (use input, payload, metadata, event_key)",
                    *_pos(node),
                )


def _macro_var(node: lark.Tree[Any]) -> str | None:
    for child in node.children:
        if isinstance(child, lark.Tree) and child.data == "exprlist" and child.children:
            first = child.children[0]
            if isinstance(first, lark.Tree):
                idents = [t for t in first.iter_subtrees() if t.data == "ident"]
                if len(idents) == 1:
                    return _first_token(idents[0])
    return None


def _check_regex(node: lark.Tree[Any]) -> None:
    literals = [t for t in node.iter_subtrees() if t.data == "literal"]
    patterns = [
        _first_token(t) for t in literals
        if any(isinstance(c, lark.Token) and c.type.endswith("STRING_LIT") for c in t.children)
    ]
    if not patterns:
        raise CelError("matches() takes a literal pattern", *_pos(node))
    for pattern in patterns:
        if len(pattern) > MAX_REGEX_CHARS:
            raise CelError(f"regex longer than {MAX_REGEX_CHARS} characters", *_pos(node))
        if _NESTED_QUANTIFIER.search(pattern):
            raise CelError("regex with nested quantifiers is not allowed (cost)", *_pos(node))


_OPERATORS = frozenset({"conditionalor", "conditionaland", "relation", "addition",
                        "multiplication", "unary"})


def _check_constants(text: str, ast: lark.Tree[Any]) -> None:
    """Type errors among constants (`1 + 'a'`), reported at the innermost failing operator.

    Sub-expressions that read no variable are evaluated once here; anything touching the
    event is only known at run time (and then counts as a no-match).
    """
    seen: set[tuple[int, int]] = set()
    for node in ast.iter_subtrees():  # bottom-up: innermost first
        if node.data not in _OPERATORS:
            continue
        meta = node.meta
        start, end = getattr(meta, "start_pos", None), getattr(meta, "end_pos", None)
        if start is None or end is None or (start, end) in seen:
            continue
        seen.add((start, end))
        if any(t.data in ("ident", "ident_arg", "member_dot_arg") for t in node.iter_subtrees()):
            continue
        if not any(len(t.children) > 1 for t in node.iter_subtrees() if t.data in _OPERATORS):
            continue  # a bare literal: nothing to type-check
        try:
            value = _ENV.program(_ENV.compile(text[start:end])).evaluate({})
        except CELEvalError as exc:
            reason = _eval_reason(exc)
            if "overload" in reason or "TypeError" in str(exc.args[1:2]):
                raise CelError(f"type error: {reason}", *_pos(node)) from exc
            continue
        except Exception:
            continue
        if isinstance(value, CELEvalError):
            raise CelError(f"type error: {_eval_reason(value)}", *_pos(node))
