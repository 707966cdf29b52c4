"""The CEL sandbox: event filters, concurrency keys and rate-limit keys.

An expression is compiled once, with sandbox limits (size, nesting, comprehensions, regex
cost; only the variables `input`, `payload`, `metadata`, `event_key`), and evaluated many
times. Filters evaluate to (matched, error) and never raise; keys evaluate to a value or
raise `EvaluationError`. Bad expressions raise `CelError` naming line and column.

Usage:
    program = compile_filter("input.user != 'bot'")
    matched, error = program.evaluate({"input": to_cel({"user": "ann"})})

celpy is reached below its public API only in `compat.py` (pinned minor, tested on upgrade).
"""

from libs.common.cel._errors import CelError, EvaluationError
from libs.common.cel._program import Program, check_expression, compile_expression, compile_filter
from libs.common.cel._sandbox import (
    MAX_BRACKET_DEPTH,
    MAX_EXPRESSION_CHARS,
    MAX_MACROS,
    MAX_NODES,
    MAX_REGEX_CHARS,
    VARIABLES,
)
from libs.common.cel.compat import RESERVED_NAMES, Bindings, to_cel

__all__ = [
    "MAX_BRACKET_DEPTH",
    "MAX_EXPRESSION_CHARS",
    "MAX_MACROS",
    "MAX_NODES",
    "MAX_REGEX_CHARS",
    "RESERVED_NAMES",
    "VARIABLES",
    "Bindings",
    "CelError",
    "EvaluationError",
    "Program",
    "check_expression",
    "compile_expression",
    "compile_filter",
    "to_cel",
]
