"""Cron expressions: which ones Ratchet accepts, and when they tick.

One rule for registration, the API and the scheduler's ticker, and one tick computation for
the API (a new cron's first `next_due_at`) and the ticker. Parsing is croniter's, so an
expression accepted here is one the ticker can schedule. Crons are evaluated in UTC and have 5 fields,
6 with seconds first, or one of croniter's `@` aliases (`@hourly`, `@daily`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from croniter import croniter

MAX_CRON_CHARS = 255


def _iter(expression: str, start: datetime) -> croniter:
    return croniter(expression, start, second_at_beginning=len(expression.split()) == 6)


def next_tick(expression: str, after: datetime) -> datetime:
    """The first tick strictly after `after`."""
    value: datetime = _iter(expression, after).get_next(datetime)
    return value


def latest_tick(expression: str, now: datetime) -> datetime:
    """The last tick at or before `now`."""
    prev: datetime = _iter(expression, now).get_prev(datetime)
    following = next_tick(expression, prev)
    return following if following <= now else prev


def cron_problem(expression: str) -> str | None:
    """Why `expression` is not a cron we accept, or None when it is."""
    if len(expression) > MAX_CRON_CHARS:
        return f"cron expression longer than {MAX_CRON_CHARS} characters"
    fields = expression.split()
    if len(fields) not in (5, 6) and not expression.startswith("@"):
        return "cron expression must have 5 fields (or 6 with seconds first)"
    try:
        ok = croniter.is_valid(expression, second_at_beginning=len(fields) == 6)
    except Exception:  # croniter raises on some inputs instead of answering False
        ok = False
    if not ok:
        return f"invalid cron expression {expression!r}"
    try:  # valid syntax can still name no real time (`0 0 31 2 *`): the ticker would spin
        croniter(expression, datetime.now(UTC), second_at_beginning=len(fields) == 6).get_next()
    except Exception:
        return f"cron expression {expression!r} never fires"
    return None


def on_crons_problem(expressions: Iterable[str]) -> str | None:
    """The first invalid entry of a workflow's `on_crons`, described, or None."""
    for index, expression in enumerate(expressions):
        problem = cron_problem(expression)
        if problem:
            return f"on_crons[{index}]: {problem}"
    return None
