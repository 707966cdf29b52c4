"""Compile-time limits: what an expression may name and how much it may cost.

Every check runs on the parse tree before anything is evaluated, so a filter or key that is
accepted cannot name unknown variables or functions, nest without bound, or carry a regex
that backtracks catastrophically. The tree is celpy's lark tree; its rule names
(`member_dot_arg`, `ident`, ...) are those of the CEL grammar celpy ships.
"""

from __future__ import annotations

import re
from typing import Any

import lark
from celpy.evaluation import CELEvalError

from libs.common.cel import compat
from libs.common.cel._errors import CelError

MAX_EXPRESSION_CHARS = 2000
MAX_NODES = 2000
MAX_BRACKET_DEPTH = 32
MAX_MACROS = 4
MAX_REGEX_CHARS = 200

VARIABLES = frozenset({"input", "payload", "metadata", "event_key"})
MACROS = frozenset({"map", "filter", "all", "exists", "exists_one"})
FUNCTIONS = compat.BASE_FUNCTIONS | {"has", "dyn"}
# A quantified group that itself contains a quantifier, e.g. (a+)+ : catastrophic backtracking
# in Python's re (CEL's RE2 would be linear, but we run on re).
_NESTED_QUANTIFIER = re.compile(r"\([^)]*[+*}][^)]*\)\s*[+*{]")


def near(text: str, line: int, column: int) -> str:
    """A short quote of `text` at a position, for error messages."""
    lines = text.splitlines() or [""]
    rest = lines[min(line, len(lines)) - 1][column - 1 :].strip()
    return f"near {rest[:20]!r}" if rest else "at end of expression"


def check_bracket_depth(text: str) -> None:
    """The parser is recursive: refuse pathological nesting before it can exhaust the stack."""
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


def check_tree(ast: lark.Tree[Any], variables: frozenset[str] = VARIABLES) -> None:
    """Names, functions and cost: unknown variables/functions and unbounded shapes fail here.

    `variables` are the names the expression may use (event filters: `VARIABLES`; webhook
    keys see `input` and `headers`, alert filters `run`)."""
    nodes = 0
    macros: list[lark.Tree[Any]] = []
    macro_vars: set[str] = set()
    for node in ast.iter_subtrees_topdown():  # type: ignore[no-untyped-call]  # lark: untyped
        nodes += 1
        if nodes > MAX_NODES:
            raise CelError(f"expression has more than {MAX_NODES} syntax nodes", *_pos(node))
        if node.data == "member_dot_arg":
            method = _first_token(node)
            if method in MACROS:
                macros.append(node)
                var = _macro_var(node)
                if var and (var in compat.RESERVED_NAMES or var.startswith("_")):
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
    allowed = variables | macro_vars
    for node in ast.iter_subtrees_topdown():  # type: ignore[no-untyped-call]  # lark: untyped
        if node.data == "ident":
            name = _first_token(node)
            if name not in allowed:
                raise CelError(
                    f"unknown variable {name!r} (use {', '.join(sorted(variables))})",
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


def check_constants(text: str, ast: lark.Tree[Any]) -> None:
    """Type errors among constants (`1 + 'a'`), reported at the innermost failing operator.

    Sub-expressions that read no variable are evaluated once here; anything touching the
    event is only known at run time (and then counts as a no-match).
    """
    env = compat.ENV
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
            value = env.program(env.compile(text[start:end])).evaluate({})
        except CELEvalError as exc:
            reason = compat.eval_reason(exc)
            if "overload" in reason or "TypeError" in str(exc.args[1:2]):
                raise CelError(f"type error: {reason}", *_pos(node)) from exc
            continue
        except Exception:
            continue
        if isinstance(value, CELEvalError):
            raise CelError(f"type error: {compat.eval_reason(value)}", *_pos(node))
