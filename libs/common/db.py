"""asyncpg pool and numbered SQL migrations."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import asyncpg
import msgspec

from libs.common import retry

log = logging.getLogger(__name__)

_MIGRATION_LOCK = 0x52415443  # "RATC": one migrator at a time across processes


CONNECT_RETRY_S = 30.0  # a service started while PostgreSQL restarts waits for it this long


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """A pool whose first connections are retried (PostgreSQL may still be starting)."""
    async for attempt in retry.policy("postgres.connect", timeout_s=CONNECT_RETRY_S):
        with attempt:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, reset=_end_transaction,
                server_settings=server_settings,
            )
    assert pool is not None
    return pool


async def _end_transaction(conn: asyncpg.Connection) -> None:
    """What a connection needs before it goes back to the pool: no transaction left open.

    asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release, a round trip on every request's path. No service keeps session state on
    a pooled connection (no session advisory locks, LISTEN, cursors or SET; SET LOCAL ends with
    its transaction), so ending an abandoned transaction is all that is left to do.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _migration_files() -> list[tuple[int, str, str]]:
    files = []
    for entry in resources.files("libs.common.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            files.append((int(name[:3]), name, entry.read_text()))
    return sorted(files)


async def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction. Returns what ran."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(name)
            log.info("applied migration %s", name)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        finally:
            await conn.close()
    return applied


class HistoryEvent(msgspec.Struct, omit_defaults=True):
    """One entry of a `run_history` row's `events` array: written by the scheduler (one row per
    run per batch), listed by GET /runs/{id}/events. The scheduler passes `detail` as
    msgspec.Raw (JSON it already encoded); readers get it decoded."""

    kind: str
    task_id: str | None = None
    task_name: str | None = None
    attempt: int | None = None
    detail: Any = None


HISTORY_DECODER = msgspec.json.Decoder(list[HistoryEvent])
