"""Analytics over the OLAP projection: run counts, task latency percentiles, throughput.

Every query filters on `{tenant:String}`, bound from the caller's token by OlapClient; the
client can choose the time range, never the tenant.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.exceptions import ClientException, HTTPException
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from libs.common.olap import RUNS, TASK_EVENTS, TASK_STATS_1M, OlapError
from libs.common.statuses import TASK_TERMINAL
from services.api.auth import Api, Tenant
from services.api.state import ApiState

DEFAULT_RANGE = timedelta(hours=1)
MAX_RANGE = timedelta(days=31)

_RANGE = (
    "ts >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')"
    " AND ts < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')"
)

RUN_COUNTS_SQL = f"""
SELECT workflow, status, count() AS runs
FROM {RUNS} FINAL
WHERE tenant = {{tenant:String}}
  AND created_at >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC')
  AND created_at < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')
GROUP BY workflow, status
ORDER BY workflow, status
"""

# Exact percentiles from the deduplicated events: wait is measured when an attempt starts
# (RUNNING), duration when it ends (terminal states).
_TERMINAL_SQL = ", ".join(f"'{status}'" for status in sorted(TASK_TERMINAL))
_LATENCY_COLUMNS = f"""
    countIf(state IN ({_TERMINAL_SQL})) AS finished,
    countIf(state IN ('FAILED', 'TIMED_OUT')) AS failed,
    quantilesIf(0.5, 0.95, 0.99)(duration_ms, duration_ms >= 0) AS duration_ms,
    quantilesIf(0.5, 0.95, 0.99)(wait_ms, state = 'RUNNING' AND wait_ms >= 0) AS wait_ms
"""
TASK_LATENCY_SQL = f"""
SELECT {_LATENCY_COLUMNS}
FROM {TASK_EVENTS} FINAL
WHERE tenant = {{tenant:String}} AND {_RANGE}
"""
TASK_LATENCY_BY_WORKFLOW_SQL = f"""
SELECT workflow, {_LATENCY_COLUMNS}
FROM {TASK_EVENTS} FINAL
WHERE tenant = {{tenant:String}} AND {_RANGE}
GROUP BY workflow
ORDER BY workflow
"""

# From the per-minute materialized stats: counts are distinct attempts, so exact.
THROUGHPUT_SQL = f"""
SELECT toUnixTimestamp(minute) * 1000 AS minute_ms,
    uniqExactMergeIf(attempts, state = 'SUCCEEDED') AS succeeded,
    uniqExactMergeIf(attempts, state = 'FAILED') AS failed,
    uniqExactMergeIf(attempts, state = 'TIMED_OUT') AS timed_out,
    uniqExactMergeIf(attempts, state = 'CANCELLED') AS cancelled
FROM {TASK_STATS_1M}
WHERE tenant = {{tenant:String}}
  AND minute >= toStartOfMinute(fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC'))
  AND minute < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC')
GROUP BY minute
ORDER BY minute
"""


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


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


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


async def _query(
    api: ApiState, tenant: str, sql: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    if api.olap is None:
        raise HTTPException("analytics store not configured", status_code=HTTP_503_SERVICE_UNAVAILABLE)
    try:
        rows: list[dict[str, Any]] = await api.olap.query(
            sql, {"start_ms": _ms(start), "end_ms": _ms(end)}, tenant=tenant
        )
    except OlapError as exc:
        raise HTTPException(
            f"analytics store unavailable: {exc}", status_code=HTTP_503_SERVICE_UNAVAILABLE
        ) from exc
    return rows


class AnalyticsController(Controller):
    """Query parameters `since` / `until` (ISO 8601) bound every endpoint; default: last hour."""

    path = "/analytics"
    tags = ["analytics"]

    @get("/runs")
    async def run_counts(
        self, api: Api, tenant: Tenant,
        since: datetime | None = None, until: datetime | None = None,
    ) -> RunCounts:
        """Runs created in the range, counted by workflow and current status."""
        start, end = time_range(since, until)
        rows = await _query(api, tenant, RUN_COUNTS_SQL, start, end)
        counts = [RunCount(workflow=r["workflow"], status=r["status"], runs=int(r["runs"])) for r in rows]
        return RunCounts(since=start.isoformat(), until=end.isoformat(), counts=counts)

    @get("/tasks")
    async def task_latency(
        self, api: Api, tenant: Tenant,
        since: datetime | None = None, until: datetime | None = None,
    ) -> TaskLatencyReport:
        """Task duration and queue-wait percentiles (p50/p95/p99, ms), overall and per workflow."""
        start, end = time_range(since, until)
        overall = await _query(api, tenant, TASK_LATENCY_SQL, start, end)
        per_workflow = await _query(api, tenant, TASK_LATENCY_BY_WORKFLOW_SQL, start, end)
        return TaskLatencyReport(
            since=start.isoformat(), until=end.isoformat(),
            overall=_latency(overall[0] if overall else {}),
            workflows=[_latency(r) for r in per_workflow],
        )

    @get("/throughput")
    async def throughput(
        self, api: Api, tenant: Tenant,
        since: datetime | None = None, until: datetime | None = None,
    ) -> Throughput:
        """Finished task attempts per minute, by outcome."""
        start, end = time_range(since, until)
        rows = await _query(api, tenant, THROUGHPUT_SQL, start, end)
        minutes = [
            MinuteThroughput(
                minute=datetime.fromtimestamp(int(r["minute_ms"]) / 1000, UTC).isoformat(),
                succeeded=int(r["succeeded"]), failed=int(r["failed"]),
                timed_out=int(r["timed_out"]), cancelled=int(r["cancelled"]),
            )
            for r in rows
        ]
        return Throughput(since=start.isoformat(), until=end.isoformat(), minutes=minutes)
