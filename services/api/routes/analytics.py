"""Analytics over the OLAP projection: run counts, task latency percentiles, throughput.

The queries live in `services.api.repos.analytics`; this module bounds the time range and
shapes the answers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, get
from litestar.exceptions import ClientException
from litestar.params import Parameter

from libs.common.tokens import Scope
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors

DEFAULT_RANGE = timedelta(hours=1)
MAX_RANGE = timedelta(days=31)


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


# Taken as text and parsed here: Litestar's own conversion would also take a bare number
# as a Unix time, which the documented `date-time` format does not allow.
Instant = Annotated[str | None, Parameter(
    schema_extra={"format": "date-time"},
    description="ISO 8601 date and time (RFC 3339); no offset means UTC",
)]


def parse_instant(name: str, value: str | datetime | None) -> datetime | None:
    """An ISO 8601 query value as a datetime; ClientException (400) when it is not one.

    The dashboard calls the handlers directly with datetimes it parsed itself; those pass.
    """
    if value is None or isinstance(value, datetime):
        return value
    try:
        # fromisoformat also reads a bare date; a time range wants a date and a time.
        if "T" not in value.upper() and " " not in value:
            raise ValueError(value)
        return datetime.fromisoformat(value)
    except ValueError:
        raise ClientException(f"`{name}` must be an ISO 8601 date and time") from None


def time_range(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """Default to the last hour; naive datetimes are UTC; at most MAX_RANGE wide."""
    end = _utc(until) if until is not None else datetime.now(UTC)
    start = _utc(since) if since is not None else end - DEFAULT_RANGE
    if start >= end:
        raise ClientException("`since` must be before `until`")
    if end - start > MAX_RANGE:
        raise ClientException(f"time range is limited to {MAX_RANGE.days} days")
    return start, end


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _percentiles(values: Any) -> Percentiles:
    vals = [*(values or []), None, None, None]
    return Percentiles(p50=vals[0], p95=vals[1], p99=vals[2])


def _latency(row: dict[str, Any]) -> TaskLatency:
    return TaskLatency(
        finished=int(row.get("finished") or 0),
        failed=int(row.get("failed") or 0),
        duration_ms=_percentiles(row.get("duration_ms")),
        wait_ms=_percentiles(row.get("wait_ms")),
        workflow=row.get("workflow"),
    )


class AnalyticsController(Controller):
    """Query parameters `since` / `until` (ISO 8601) bound every endpoint; default: last hour."""

    path = "/analytics"
    tags = ["analytics"]
    guards = [requires(Scope.READ)]

    @get("/runs", operation_id="getRunCounts", responses=errors(503))
    async def run_counts(
        self, api: Api, tenant: Tenant,
        since: Instant = None, until: Instant = None,
    ) -> RunCounts:
        """Runs created in the range, counted by workflow and current status."""
        start, end = time_range(parse_instant("since", since), parse_instant("until", until))
        rows = await api.analytics.run_counts(tenant, start, end)
        counts = [RunCount(workflow=r["workflow"], status=r["status"], runs=int(r["runs"])) for r in rows]
        return RunCounts(since=start.isoformat(), until=end.isoformat(), counts=counts)

    @get("/tasks", operation_id="getTaskLatency", responses=errors(503))
    async def task_latency(
        self, api: Api, tenant: Tenant,
        since: Instant = None, until: Instant = None,
    ) -> TaskLatencyReport:
        """Task duration and queue-wait percentiles (p50/p95/p99, ms), overall and per workflow."""
        start, end = time_range(parse_instant("since", since), parse_instant("until", until))
        overall, per_workflow = await api.analytics.task_latency(tenant, start, end)
        return TaskLatencyReport(
            since=start.isoformat(), until=end.isoformat(),
            overall=_latency(overall),
            workflows=[_latency(r) for r in per_workflow],
        )

    @get("/throughput", operation_id="getThroughput", responses=errors(503))
    async def throughput(
        self, api: Api, tenant: Tenant,
        since: Instant = None, until: Instant = None,
    ) -> Throughput:
        """Finished task attempts per minute, by outcome."""
        start, end = time_range(parse_instant("since", since), parse_instant("until", until))
        rows = await api.analytics.throughput(tenant, start, end)
        minutes = [
            MinuteThroughput(
                minute=datetime.fromtimestamp(int(r["minute_ms"]) / 1000, UTC).isoformat(),
                succeeded=int(r["succeeded"]), failed=int(r["failed"]),
                timed_out=int(r["timed_out"]), cancelled=int(r["cancelled"]),
            )
            for r in rows
        ]
        return Throughput(since=start.isoformat(), until=end.isoformat(), minutes=minutes)
