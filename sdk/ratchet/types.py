"""Public option types: concurrency, rate limits, labels, stickiness."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Strategy(StrEnum):
    GROUP_ROUND_ROBIN = "GROUP_ROUND_ROBIN"
    CANCEL_IN_PROGRESS = "CANCEL_IN_PROGRESS"
    CANCEL_NEWEST = "CANCEL_NEWEST"


class StickyStrategy(StrEnum):
    SOFT = "SOFT"
    HARD = "HARD"


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most `max_runs` running per value of the CEL `key` (over input and metadata)."""

    key: str
    max_runs: int = 1
    strategy: Strategy = Strategy.GROUP_ROUND_ROBIN


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Consume `units` of a rate limit: a static `key` or a `dynamic_key` CEL over the input."""

    key: str | None = None
    units: int | str = 1
    dynamic_key: str | None = None
    limit: int | None = None
    per: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredLabel:
    value: str
    required: bool = True
    weight: int = 100
