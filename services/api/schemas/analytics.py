"""Bodies of `/analytics`, and the `since` / `until` query parameter several routes take."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar.params import Parameter


class Percentiles(msgspec.Struct):
    p50: float | None
    p95: float | None
    p99: float | None


class RunCount(msgspec.Struct):
    workflow: str
    status: str
    runs: int


class RunCounts(msgspec.Struct):
    since: str
    until: str
    counts: list[RunCount]


class TaskLatency(msgspec.Struct):
    finished: int
    failed: int
    duration_ms: Percentiles
    wait_ms: Percentiles
    workflow: str | None = None


class TaskLatencyReport(msgspec.Struct):
    since: str
    until: str
    overall: TaskLatency
    workflows: list[TaskLatency]


class MinuteThroughput(msgspec.Struct):
    minute: str
    succeeded: int
    failed: int
    timed_out: int
    cancelled: int


class Throughput(msgspec.Struct):
    since: str
    until: str
    minutes: list[MinuteThroughput]


# Taken as text and parsed by `actions.analytics.parse_instant`: Litestar's own conversion
# would also take a bare number as a Unix time, which the documented `date-time` format does
# not allow.
Instant = Annotated[str | None, Parameter(
    schema_extra={"format": "date-time"},
    description="ISO 8601 date and time (RFC 3339); no offset means UTC",
)]
