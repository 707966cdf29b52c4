"""The two ways an expression fails: it cannot be compiled, or it failed on some input."""

from __future__ import annotations


class CelError(ValueError):
    """An expression that cannot become a filter or key; the message names line and column."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(f"line {line}, column {column}: {message}")
        self.line = line
        self.column = column
        self.reason = message


class EvaluationError(ValueError):
    """A compiled expression that failed on this input (a missing field, a type mismatch)."""
