"""Analytics over the OLAP projection (ClickHouse / chDB): the queries and their execution.

Every query filters on `{tenant:String}`, bound from the caller's token by OlapClient; the
caller chooses the time range, never the tenant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from libs.common.olap import RUNS, TASK_EVENTS, TASK_STATS_1M, OlapClient, OlapError
from libs.common.statuses import TASK_TERMINAL
from services.api.repos.errors import Unavailable

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


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


class AnalyticsRepo:
    def __init__(self, olap: OlapClient | None) -> None:
        self._olap = olap

    async def _query(
        self, tenant: str, sql: str, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        if self._olap is None:
            raise Unavailable("analytics store not configured")
        try:
            rows: list[dict[str, Any]] = await self._olap.query(
                sql, {"start_ms": _ms(start), "end_ms": _ms(end)}, tenant=tenant
            )
        except OlapError as exc:
            raise Unavailable(f"analytics store unavailable: {exc}") from exc
        return rows

    async def run_counts(self, tenant: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Runs created in the range, counted by workflow and status."""
        return await self._query(tenant, RUN_COUNTS_SQL, start, end)

    async def task_latency(
        self, tenant: str, start: datetime, end: datetime
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Latency percentiles over all the tenant's tasks, and per workflow."""
        overall = await self._query(tenant, TASK_LATENCY_SQL, start, end)
        per_workflow = await self._query(tenant, TASK_LATENCY_BY_WORKFLOW_SQL, start, end)
        return (overall[0] if overall else {}), per_workflow

    async def throughput(self, tenant: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Finished attempts per minute, by outcome."""
        return await self._query(tenant, THROUGHPUT_SQL, start, end)
