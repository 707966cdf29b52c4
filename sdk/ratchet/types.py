"""Public option types: concurrency, rate limits, labels, stickiness."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
