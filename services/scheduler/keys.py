"""CEL expressions that name a concurrency group or a rate-limit key, or count units.

They use the shared CEL sandbox (libs/common/cel: size, nesting, macro and regex limits),
which also answers the API's "does this expression compile" check. Each distinct expression
compiles once per process; each task evaluates its expressions ONCE,
when it is queued (the workflow-level key when the run is triggered), never per scheduling
decision. The activation holds `input` (the run input) and `metadata` (the run metadata).
"""

from __future__ import annotations

from typing import Any

import msgspec
from celpy import celtypes

from libs.common.cel import EvaluationError, compile_expression, to_cel
from libs.common.specs import WorkflowSpec

_JSON = msgspec.json.Encoder()
MAX_KEY_CHARS = 256


class KeyError_(ValueError):
    """An expression that did not produce a usable key or unit count for this input."""


def activation(input_json: bytes, metadata: dict[str, str]) -> dict[str, Any]:
    """The CEL variables for one run, built once and shared by all its expressions."""
    try:
        data = msgspec.json.decode(input_json) if input_json else {}
    except msgspec.DecodeError:
        data = {}
    return {"input": to_cel(data), "metadata": to_cel(dict(metadata))}


def _evaluate(expression: str, act: dict[str, Any]) -> Any:
    program = compile_expression(expression)
    try:
        return program.value(act)
    except EvaluationError as exc:
        raise KeyError_(f"{expression!r}: {exc}") from exc


def eval_key(expression: str, act: dict[str, Any]) -> str:
    """A group/limit key: strings as they are, numbers and bools in their CEL spelling."""
    value = _evaluate(expression, act)
    if isinstance(value, str):
        out = str(value)
    elif isinstance(value, (bool, celtypes.BoolType)):
        out = "true" if value else "false"
    elif isinstance(value, (int, float)):
        out = str(value)
    elif value is None:
        raise KeyError_(f"{expression!r} evaluated to null")
    else:
        out = _JSON.encode(_plain(value)).decode()
    if len(out) > MAX_KEY_CHARS:
        raise KeyError_(f"{expression!r} produced a key longer than {MAX_KEY_CHARS} characters")
    return out


def eval_units(units: int | str, act: dict[str, Any]) -> int:
    """Units a task consumes: an int literal, or a CEL expression that yields an int >= 0."""
    if isinstance(units, int):
        return units
    value = _evaluate(units, act)
    if isinstance(value, (bool, celtypes.BoolType)) or not isinstance(value, int):
        raise KeyError_(f"units {units!r} returned {type(value).__name__}, not an int")
    if int(value) < 0:
        raise KeyError_(f"units {units!r} returned a negative count")
    return int(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bool, celtypes.BoolType)):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def uses_cel(spec: WorkflowSpec) -> bool:
    """Whether evaluating this workflow's keys or units needs the run's input as CEL."""
    if spec.concurrency:
        return True
    for task in [*spec.tasks, spec.on_failure, spec.on_success]:
        if task is None:
            continue
        if task.concurrency:
            return True
        for rl in task.rate_limits:
            if rl.dynamic_key is not None or isinstance(rl.units, str):
                return True
    return False
