"""The OLAP store keeps what PostgreSQL keeps: RATCHET_RETENTION_DAYS, as ClickHouse TTLs.

PostgreSQL drops whole days of runs and tasks (services/scheduler/partitions.py); here every
table gets a TTL on its time column, so ClickHouse drops expired rows (whole parts where it
can) during its merges, with no job of ours to run. Setting 0 removes the TTLs (keep all).
Applied at every replicator start, so a changed setting takes effect on restart.
"""

from __future__ import annotations

import contextlib

from libs.common import olap
from libs.common.olap import OlapBackend

# table -> the time expression its TTL follows
TTL_COLUMNS: dict[str, str] = {
    olap.TASK_EVENTS: "toDateTime(ts)",
    olap.RUNS: "toDateTime(updated_at)",
    olap.EVENTS: "toDateTime(ts)",
    olap.MATCHES: "toDateTime(ts)",
    olap.TASK_LOGS: "toDateTime(ts)",
    olap.TASK_STATS_1M: "minute",
}


def statements(retention_days: int) -> list[str]:
    """The ALTERs that put the tables' TTLs in line with `retention_days`."""
    if retention_days < 0:
        raise ValueError(f"retention_days must be >= 0, got {retention_days}")
    if retention_days == 0:
        return [f"ALTER TABLE {table} REMOVE TTL" for table in TTL_COLUMNS]
    return [
        f"ALTER TABLE {table} MODIFY TTL {column} + INTERVAL {int(retention_days)} DAY"
        for table, column in TTL_COLUMNS.items()
    ]


async def apply(backend: OlapBackend, retention_days: int) -> None:
    for sql in statements(retention_days):
        if retention_days == 0:
            # REMOVE TTL on a table that never had one fails in ClickHouse: nothing to remove.
            with contextlib.suppress(olap.OlapError):
                await backend.execute(sql)
        else:
            await backend.execute(sql)
