"""Analytics over the OLAP projection: run counts, task latency percentiles, throughput.

The queries live in `services.api.repos.analytics`; this module bounds the time range and
shapes the answers the REST API returns and the analytics page draws.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.api.repos.errors import Invalid
from services.api.schemas.analytics import (
    MinuteThroughput,
    Percentiles,
    RunCount,
    RunCounts,
    TaskLatency,
    TaskLatencyReport,
    Throughput,
)
from services.api.state import ApiState

DEFAULT_RANGE = timedelta(hours=1)
MAX_RANGE = timedelta(days=31)


def parse_instant(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 query value (`schemas.analytics.Instant`) as a datetime; `Invalid` (400)
    when it is not one."""
    if value is None:
        return None
    try:
        # fromisoformat also reads a bare date; a time range wants a date and a time.
        if "T" not in value.upper() and " " not in value:
            raise ValueError(value)
        return datetime.fromisoformat(value)
    except ValueError:
        raise Invalid(f"`{name}` must be an ISO 8601 date and time") from None


def time_range(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """Default to the last hour; naive datetimes are UTC; at most MAX_RANGE wide."""
    end = _utc(until) if until is not None else datetime.now(UTC)
    start = _utc(since) if since is not None else end - DEFAULT_RANGE
    if start >= end:
        raise Invalid("`since` must be before `until`")
    if end - start > MAX_RANGE:
        raise Invalid(f"time range is limited to {MAX_RANGE.days} days")
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


async def run_counts(
    api: ApiState, tenant: str, since: datetime | None, until: datetime | None
) -> RunCounts:
    """Runs created in the range, counted by workflow and current status."""
    start, end = time_range(since, until)
    rows = await api.analytics.run_counts(tenant, start, end)
    counts = [RunCount(workflow=r["workflow"], status=r["status"], runs=int(r["runs"])) for r in rows]
    return RunCounts(since=start.isoformat(), until=end.isoformat(), counts=counts)


async def task_latency(
    api: ApiState, tenant: str, since: datetime | None, until: datetime | None
) -> TaskLatencyReport:
    """Task duration and queue-wait percentiles (p50/p95/p99, ms), overall and per workflow."""
    start, end = time_range(since, until)
    overall, per_workflow = await api.analytics.task_latency(tenant, start, end)
    return TaskLatencyReport(
        since=start.isoformat(), until=end.isoformat(),
        overall=_latency(overall),
        workflows=[_latency(r) for r in per_workflow],
    )


async def throughput(
    api: ApiState, tenant: str, since: datetime | None, until: datetime | None
) -> Throughput:
    """Finished task attempts per minute, by outcome."""
    start, end = time_range(since, until)
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
