"""Compiling an expression once and evaluating it many times."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import Activation, CELEvalError

from libs.common.cel import _sandbox, compat
from libs.common.cel._errors import CelError, EvaluationError
from libs.common.cel.compat import Bindings


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled, sandbox-checked expression."""

    expression: str
    runner: celpy.Runner
    entry: Callable[[Activation], Any] | None = None  # None: evaluate through the runner

    def evaluate(self, activation: Bindings | Mapping[str, Any]) -> tuple[bool, str | None]:
        """(matched, error) for a filter. Errors (missing fields, wrong types, non-bool)
        never raise: they are an outcome, counted as no match."""
        try:
            value = self._value(activation)
        except CELEvalError as exc:
            return False, compat.eval_reason(exc)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if isinstance(value, CELEvalError):
            return False, compat.eval_reason(value)
        if isinstance(value, celtypes.BoolType):
            return bool(value), None
        return False, f"expression returned {type(value).__name__}, not bool"

    def value(self, variables: Mapping[str, Any]) -> Any:
        """The expression's CEL value for these variables (CEL values, see `to_cel`).

        Raises:
            EvaluationError: the expression failed on this input; the message says why, as
                a filter's error does (e.g. "no such member in mapping: 'user'").
        """
        try:
            value = self.runner.evaluate(dict(variables))
        except CELEvalError as exc:
            raise EvaluationError(compat.eval_reason(exc)) from exc
        except Exception as exc:
            raise EvaluationError(f"{type(exc).__name__}: {exc}") from exc
        if isinstance(value, CELEvalError):
            raise EvaluationError(compat.eval_reason(value))
        return value

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


def compile_filter(expression: str, variables: frozenset[str] = _sandbox.VARIABLES) -> Program:
    """Parse, sandbox-check and compile. Raises CelError naming the position of the problem.

    `variables`: the names the expression may use (the event-filter ones by default)."""
    if not expression.strip():
        raise CelError("expression is empty")
    if len(expression) > _sandbox.MAX_EXPRESSION_CHARS:
        raise CelError(f"expression longer than {_sandbox.MAX_EXPRESSION_CHARS} characters")
    _sandbox.check_bracket_depth(expression)
    env = compat.ENV
    try:
        ast = env.compile(expression)
    except CELParseError as exc:
        line, column = exc.line or 1, exc.column or 1
        raise CelError(f"syntax error {_sandbox.near(expression, line, column)}",
                       line, column) from exc
    except RecursionError as exc:
        raise CelError("expression nests too deeply") from exc
    _sandbox.check_tree(ast, variables)
    _sandbox.check_constants(expression, ast)
    try:
        runner = env.program(ast)
    except Exception as exc:  # transpiler rejects something the grammar allowed
        raise CelError(f"cannot compile: {exc}") from exc
    assert isinstance(runner, compat.Runner)
    return Program(expression, runner, compat.entry_point(runner.source_text))


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Program:
    """`compile_filter`, cached per process: for keys and unit counts evaluated per task."""
    return compile_filter(expression)


def check_expression(expression: str) -> str | None:
    """None when the expression compiles, else a message with its position (for a 400)."""
    try:
        compile_expression(expression)
    except CelError as exc:
        return str(exc)
    return None
