"""Task logs in the OLAP store (ClickHouse `task_logs`, see docs/logs.md): a run's log and a
tenant-wide substring search. Every query filters on `{tenant:String}`, which OlapClient binds
from the caller's token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from libs.common.olap import TASK_LOGS, OlapClient, OlapError
from services.api.repos.errors import Unavailable

_COLUMNS = (
    "run_id, task_name AS task, attempt, toUnixTimestamp64Milli(ts) AS ts_ms, level, message,"
    " workflow"
)

# The sorting key starts (tenant, run_id): one contiguous range. FINAL collapses lines a
# redelivery inserted twice.
RUN_LOGS_SQL = f"""
SELECT {_COLUMNS}
FROM {TASK_LOGS} FINAL
WHERE tenant = {{tenant:String}} AND run_id = {{run_id:String}}
ORDER BY ts, task_id, attempt, seq
LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}
"""

# Case-insensitive substring match written as LIKE over lower(message), the expression the
# ngram skip index covers; newest lines first.
SEARCH_SQL = f"""
SELECT {_COLUMNS}
FROM {TASK_LOGS} FINAL
WHERE tenant = {{tenant:String}}
  AND ts >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC')
  AND ({{workflow:String}} = '' OR workflow = {{workflow:String}})
  AND lower(message) LIKE {{pattern:String}}
ORDER BY ts DESC, run_id, task_id, attempt, seq DESC
LIMIT {{limit:UInt32}}
"""


def like_pattern(q: str) -> str:
    """`q` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class LogRepo:
    def __init__(self, olap: OlapClient | None) -> None:
        self._olap = olap

    async def _query(self, tenant: str, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self._olap is None:
            raise Unavailable("log store not configured")
        try:
            rows: list[dict[str, Any]] = await self._olap.query(sql, params, tenant=tenant)
        except OlapError as exc:
            raise Unavailable(f"log store unavailable: {exc}") from exc
        return rows

    async def run_logs(
        self, tenant: str, run_id: str, *, limit: int, offset: int = 0
    ) -> list[dict[str, Any]]:
        """The run's lines in order: by time, then task, attempt and position."""
        return await self._query(
            tenant, RUN_LOGS_SQL, {"run_id": run_id, "limit": limit, "offset": offset}
        )

    async def search(
        self, tenant: str, q: str, *, workflow: str | None, since: datetime, limit: int
    ) -> list[dict[str, Any]]:
        """Lines containing `q` (case-insensitive) since `since`, newest first."""
        params = {
            "pattern": like_pattern(q), "workflow": workflow or "",
            "since_ms": int(since.timestamp() * 1000), "limit": limit,
        }
        return await self._query(tenant, SEARCH_SQL, params)
