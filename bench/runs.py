"""How the benches read back their runs' outcomes from PostgreSQL.

By (tenant, status, created_at), the runs_by_status index, and the ids kept in Python: looking
up 10,000 ids by primary key probes every day partition for each id (there is no created_at to
prune by), and that poll's CPU would be counted as the stack's by `bench.cpu`.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

import asyncpg

TENANT = os.environ.get("RATCHET_TENANT", "dev")  # the token's tenant (.run/env)
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED")


async def finished(
    pool: asyncpg.Pool, ids: Collection[str], since: float,
    statuses: Collection[str] = ("SUCCEEDED",), tenant: str = TENANT,
) -> dict[str, datetime]:
    """finished_at of those of `ids` (created at or after `since`, epoch seconds) that ended in
    one of `statuses`."""
    rows = await pool.fetch(
        "SELECT id, finished_at FROM runs WHERE tenant_id = $1 AND status = ANY($2::text[])"
        " AND created_at >= $3",
        tenant, list(statuses), datetime.fromtimestamp(since, UTC) - timedelta(seconds=5),
    )
    wanted = ids if isinstance(ids, (set, frozenset, dict)) else set(ids)
    return {r["id"]: r["finished_at"] for r in rows if r["id"] in wanted}
