"""Flow control's rows as the scheduler reads and moves them (docs/flow-control.md).

Windows are joined (libs/common/flow.py) by the API and here; the scheduler owning the tenant
seals them at their deadline and creates their runs. Sealing is a guarded state change
('open' -> 'sealed', only once the deadline passed), so it needs no fence: a sealed window
becomes its run, whose id it fixed when it opened, whichever scheduler creates it, and that
creation goes through the fenced batch like any trigger (an existing run is not created
twice). A window is marked 'started' after the batch that created its run committed;
until then a restart finds it 'sealed' and creates the run again (a no-op if it exists).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from libs.common.messages import TriggerRun, encode

_DUE_MS = "ceil(extract(epoch FROM deadline) * 1000)::bigint"


@dataclass(frozen=True, slots=True)
class WindowRow:
    tenant: str
    run_id: str
    workflow: str
    kind: str  # debounce | batch | paused
    keep: str  # last | all
    state: str  # open | sealed | started | dropped
    due_ms: int
    items: int = 0  # triggers held; the last one's seq


def _row(r: asyncpg.Record) -> WindowRow:
    return WindowRow(r["tenant_id"], r["run_id"], r["workflow"], r["kind"], r["keep"],
                     r["state"], int(r["due_ms"]), int(r["items"]))


_WINDOW = ("SELECT tenant_id, run_id, workflow, kind, keep, state, items,"
           f" {_DUE_MS} AS due_ms FROM flow_windows")


async def pauses(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """(tenant, workflow, mode) of every paused workflow."""
    rows = await conn.fetch("SELECT tenant_id, workflow, mode FROM workflow_pauses")
    return [(r["tenant_id"], r["workflow"], r["mode"]) for r in rows]


async def pending(conn: asyncpg.Connection, horizon_ms: int | None = None) -> list[WindowRow]:
    """Windows not started yet (open or sealed); with `horizon_ms`, only those due before
    then (epoch ms)."""
    if horizon_ms is None:
        rows = await conn.fetch(f"{_WINDOW} WHERE state IN ('open', 'sealed')")
    else:
        rows = await conn.fetch(
            f"{_WINDOW} WHERE state IN ('open', 'sealed')"
            " AND deadline < to_timestamp($1::float8 / 1000)", horizon_ms,
        )
    return [_row(r) for r in rows]


async def seal_due(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> list[WindowRow]:
    """Seal those of the windows that are open and past their deadline; return the current
    row of each window asked for (sealed now, sealed before, or open with a later deadline)."""
    if not keys:
        return []
    tenants, runs = [k[0] for k in keys], [k[1] for k in keys]
    await conn.execute(
        "UPDATE flow_windows f SET state = 'sealed', sealed_at = clock_timestamp()"
        " FROM unnest($1::text[], $2::text[]) AS x(t, r)"
        " WHERE f.tenant_id = x.t AND f.run_id = x.r AND f.state = 'open'"
        " AND f.deadline <= clock_timestamp()", tenants, runs,
    )
    rows = await conn.fetch(
        f"{_WINDOW} f JOIN unnest($1::text[], $2::text[]) AS x(t, r)"
        " ON f.tenant_id = x.t AND f.run_id = x.r", tenants, runs,
    )
    return [_row(r) for r in rows]


async def sealed_of(conn: asyncpg.Connection, tenant: str, workflow: str) -> list[WindowRow]:
    rows = await conn.fetch(
        f"{_WINDOW} WHERE tenant_id = $1 AND workflow = $2 AND state = 'sealed'",
        tenant, workflow,
    )
    return [_row(r) for r in rows]


async def items(conn: asyncpg.Connection, keys: list[tuple[str, str, int]]) -> dict[str, list[bytes]]:
    """Run id -> the msgpack triggers its window holds from seq `from` on (tenant, run id,
    from), in arrival order: 1 for all of them, the last seq for the last one alone."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT i.run_id, i.trigger FROM flow_items i"
        " JOIN unnest($1::text[], $2::text[], $3::integer[]) AS x(t, r, s)"
        " ON i.tenant_id = x.t AND i.run_id = x.r AND i.seq >= x.s"
        " ORDER BY i.run_id, i.seq",
        [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
    )
    out: dict[str, list[bytes]] = {}
    for r in rows:
        out.setdefault(r["run_id"], []).append(bytes(r["trigger"]))
    return out


async def hold(conn: asyncpg.Connection, tenant: str, trig: TriggerRun) -> None:
    """Keep a trigger of a workflow paused in queue mode: a sealed window of its own, started
    on resume. A redelivered trigger is kept once."""
    await conn.execute(
        "WITH w AS (INSERT INTO flow_windows (tenant_id, run_id, workflow, kind, state, items,"
        " sealed_at) VALUES ($1, $2, $3, 'paused', 'sealed', 1, clock_timestamp())"
        " ON CONFLICT DO NOTHING RETURNING run_id)"
        " INSERT INTO flow_items (tenant_id, trigger_id, run_id, seq, source, trigger)"
        " SELECT $1, run_id, run_id, 1, $4, $5 FROM w ON CONFLICT DO NOTHING",
        tenant, trig.run_id, trig.workflow, trig.source, encode(trig),
    )


async def mark(conn: asyncpg.Connection, rows: Iterable[tuple[str, str, str]]) -> None:
    """Move sealed windows to 'started' or 'dropped': (tenant, run id, state)."""
    rows = list(rows)
    if rows:
        await conn.execute(
            "UPDATE flow_windows f SET state = x.s, started_at = clock_timestamp()"
            " FROM unnest($1::text[], $2::text[], $3::text[]) AS x(t, r, s)"
            " WHERE f.tenant_id = x.t AND f.run_id = x.r AND f.state = 'sealed'",
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
        )


async def count_dropped(conn: asyncpg.Connection, counts: dict[tuple[str, str], int]) -> None:
    if counts:
        await conn.execute(
            "UPDATE workflow_pauses p SET dropped = p.dropped + x.n"
            " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(t, w, n)"
            " WHERE p.tenant_id = x.t AND p.workflow = x.w",
            [k[0] for k in counts], [k[1] for k in counts], list(counts.values()),
        )


async def prune(conn: asyncpg.Connection, retention_days: int, limit: int = 10_000) -> int:
    """Delete up to `limit` windows started or dropped more than `retention_days` ago, with
    the triggers they held; returns how many windows went."""
    rows = await conn.fetch(
        "WITH gone AS (DELETE FROM flow_windows WHERE ctid IN ("
        "  SELECT ctid FROM flow_windows WHERE state IN ('started', 'dropped')"
        "  AND started_at < clock_timestamp() - make_interval(days => $1) LIMIT $2)"
        " RETURNING tenant_id, run_id),"
        " items AS (DELETE FROM flow_items i USING gone g"
        "  WHERE i.tenant_id = g.tenant_id AND i.run_id = g.run_id)"
        " SELECT count(*) AS n FROM gone", retention_days, limit,
    )
    return int(rows[0]["n"])
