"""Public option types: concurrency, rate limits, labels, stickiness, debounce, batching."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal


class Strategy(StrEnum):
    GROUP_ROUND_ROBIN = "GROUP_ROUND_ROBIN"
    CANCEL_IN_PROGRESS = "CANCEL_IN_PROGRESS"
    CANCEL_NEWEST = "CANCEL_NEWEST"


class StickyStrategy(StrEnum):
    """Keep a run's tasks on the worker that took its first task.

    SOFT prefers that worker while it has a free slot (others take the task otherwise);
    HARD waits for that worker alone (until the task's schedule timeout).
    """

    SOFT = "SOFT"
    HARD = "HARD"


Sticky = StickyStrategy


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most `max_runs` running per value of the CEL `key` (over input and metadata).

    The key is evaluated once, when the run is triggered (workflow level) or the task is
    queued (task level). GROUP_ROUND_ROBIN queues per key and serves keys in turn;
    CANCEL_IN_PROGRESS cancels the oldest running to admit the newest; CANCEL_NEWEST
    cancels a newcomer while the key is full.
    """

    key: str
    max_runs: int = 1
    strategy: Strategy = Strategy.GROUP_ROUND_ROBIN


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Consume `units` of a rate limit when the task starts.

    Either a static `key` (created first with `r.rate_limits.put(key, limit=, per=)`) or a
    `dynamic_key` CEL over the input, with its own `limit` and `per` ("second", "minute",
    "hour"). `units` is an int or a CEL expression over the input that yields one.
    """

    key: str | None = None
    units: int | str = 1
    dynamic_key: str | None = None
    limit: int | None = None
    per: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredLabel:
    """A worker label a task wants: `required` ones must match; others add `weight`."""

    value: str
    required: bool = False
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Debounce:
    """Collapse a burst of triggers with the same `key` into one run.

    The run starts `period` after the last trigger of the burst, or `max_wait` after its
    first, whichever is sooner. `keep="last"` gives it the last trigger's input, `keep="all"`
    `{"items": [inputs in arrival order]}`. `key` is CEL over the input and metadata
    (`"input.thread"`); empty means one window for all triggers. Every trigger of the burst
    answers with the id of that one run.
    """

    key: str = ""
    period: timedelta = timedelta(seconds=1)
    max_wait: timedelta | None = None  # default: 10 periods
    keep: Literal["last", "all"] = "last"

    def spec(self) -> dict[str, Any]:
        if self.keep not in ("last", "all"):
            raise ValueError(f"keep must be 'last' or 'all', not {self.keep!r}")
        period = _seconds(self.period, "period")
        max_wait = _seconds(self.max_wait, "max_wait") if self.max_wait is not None else 10 * period
        return {"key": self.key, "period_s": period, "max_wait_s": max_wait, "keep": self.keep}


@dataclass(frozen=True, slots=True)
class Batch:
    """Collect triggers with the same `key` into one run with input `{"items": [...]}`,
    started once `size` arrived or `max_wait` after the first, whichever is sooner."""

    key: str = ""
    size: int = 100
    max_wait: timedelta = timedelta(seconds=1)

    def spec(self) -> dict[str, Any]:
        if self.size < 1:
            raise ValueError("batch size must be at least 1")
        return {"key": self.key, "size": self.size, "max_wait_s": _seconds(self.max_wait, "max_wait")}


def _seconds(value: timedelta | float, name: str) -> float:
    out = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if out <= 0:
        raise ValueError(f"{name} must be positive")
    return out
