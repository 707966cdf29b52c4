"""Cron ticks and one-off scheduled runs, fired exactly once by any number of schedulers.

Each cron row keeps `next_due_at`, the next tick to fire. A ticker claims due rows with
`FOR UPDATE SKIP LOCKED` (two schedulers never hold the same row), publishes the run
triggers while holding the lock, then advances `last_tick`/`next_due_at` with an UPDATE
conditioned on the `next_due_at` it read, and commits. Run ids are derived from (cron, tick),
and the msg-ids from the run ids, so a crash between publish and commit re-publishes the
same trigger, which the CMD stream (and, after its window, the scheduler) drops.

Missed ticks (every scheduler down, or a ticker far behind): only the most recent missed
tick fires, once, as soon as a ticker runs again; older missed ticks are skipped. A backlog
of identical runs after an outage is rarely what a cron user wants, and one catch-up run
keeps "at least one run per period you were down" for jobs like nightly reports.
Scheduled runs fire once at (or, after an outage, as soon as possible after) their time.

Crons are evaluated in UTC. Expressions have 5 fields, or 6 with seconds first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
from nats.js import JetStreamContext

from libs.common import jetstream, subjects
from libs.common.cronexpr import latest_tick, next_tick
from libs.common.jetstream import Outgoing
from libs.common.messages import TriggerRun, encode
from libs.common.settings import Settings

log = logging.getLogger(__name__)

CRON_NAMESPACE = uuid.UUID("a8c2d7e4-1f3b-4c59-8e6a-0b9d4f2c7a13")
DEFAULT_POLL_INTERVAL_S = 1.0
_ANY_DUE = (
    "SELECT EXISTS (SELECT 1 FROM crons WHERE next_due_at <= $1)"
    " OR EXISTS (SELECT 1 FROM scheduled_runs WHERE fired_at IS NULL AND run_at <= $1)"
)
DEFAULT_BATCH = 500
# A row whose expression no longer parses (it was valid when stored) is retried this late.
BROKEN_RETRY = timedelta(hours=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


def cron_run_id(tenant: str, cron_id: str, tick: datetime) -> str:
    tick_s = tick.astimezone(UTC).isoformat()
    return uuid.uuid5(CRON_NAMESPACE, f"cron\x00{tenant}\x00{cron_id}\x00{tick_s}").hex


def _trigger(tenant: str, run_id: str, row: Any, source: str) -> Outgoing:
    trig = TriggerRun(
        run_id=run_id, workflow=row["workflow"], version_id=row["version_id"],
        input=row["input"].encode(), metadata=_str_map(row["metadata"]), source=source,
    )
    return Outgoing(subjects.cmd(tenant, "run.trigger"), encode(trig), f"run:{run_id}:trigger")


def _ids(row: Any) -> dict[str, object]:
    """Log fields (see libs/common/logs.py) of a cron or scheduled-run row."""
    return {"tenant": row["tenant_id"], "workflow": row["workflow"]}


def _str_map(raw: str) -> dict[str, str]:
    decoded = msgspec.json.decode(raw)
    if not isinstance(decoded, dict):
        return {}
    return {str(k): v if isinstance(v, str) else msgspec.json.encode(v).decode()
            for k, v in decoded.items()}


class CronTicker:
    """Fires due cron ticks and scheduled runs; safe to run in every scheduler instance.

    `now` and `poll_interval_s` are injectable so tests drive time instead of waiting for it.
    """

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        now: Callable[[], datetime] = utcnow,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self._js = js
        self._now = now
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.fired = 0

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name="cron-ticker")

    async def stop(self) -> None:
        """Idempotent; lets a tick in progress finish (its transaction is short)."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                while await self.tick_once() >= self._batch_size:
                    pass  # a full batch: more may be due right now
            except Exception:
                log.exception("cron tick failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._poll_interval_s)

    async def tick_once(self) -> int:
        """Fire everything due at `now()`. Returns how many rows were claimed."""
        now = self._now()
        # One indexed read (no transaction) on the ticks where nothing is due: most of them.
        if not await self._pool.fetchval(_ANY_DUE, now):
            return 0
        return await self._fire_crons(now) + await self._fire_scheduled(now)

    async def _fire_crons(self, now: datetime) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT c.tenant_id, c.id, c.workflow, c.expression, c.input::text AS input,"
                " c.metadata::text AS metadata, c.next_due_at, w.current_version_id AS version_id"
                " FROM crons c LEFT JOIN workflows w"
                " ON w.tenant_id = c.tenant_id AND w.name = c.workflow"
                " WHERE c.next_due_at <= $1 ORDER BY c.next_due_at LIMIT $2"
                " FOR UPDATE OF c SKIP LOCKED",
                now, self._batch_size,
            )
            if not rows:
                return 0
            outgoing: list[Outgoing] = []
            updates: list[tuple[str, str, datetime | None, datetime, datetime]] = []
            for row in rows:
                try:
                    tick = latest_tick(row["expression"], now)
                    following = next_tick(row["expression"], tick)
                except Exception as exc:
                    log.error("cron %s of %s cannot be evaluated: %r", row["id"],
                              row["tenant_id"], exc, extra=_ids(row))
                    updates.append((row["tenant_id"], row["id"], None, now + BROKEN_RETRY,
                                    row["next_due_at"]))
                    continue
                if tick > row["next_due_at"]:
                    log.warning("cron %s of %s skipped missed ticks from %s; firing %s",
                                row["id"], row["tenant_id"], row["next_due_at"], tick,
                                extra=_ids(row))
                if row["version_id"] is None:
                    log.warning("cron %s: workflow %r of %s is not registered; tick %s skipped",
                                row["id"], row["workflow"], row["tenant_id"], tick,
                                extra=_ids(row))
                else:
                    run_id = cron_run_id(row["tenant_id"], row["id"], tick)
                    outgoing.append(_trigger(row["tenant_id"], run_id, row, "cron"))
                updates.append((row["tenant_id"], row["id"], tick, following, row["next_due_at"]))
            await jetstream.publish_batch(self._js, outgoing)
            # Conditional on the next_due_at we read: even without the row lock, a second
            # ticker could never move the same tick forward twice.
            await conn.execute(
                "UPDATE crons c SET last_tick = COALESCE(u.tick, c.last_tick),"
                " next_due_at = u.next FROM unnest($1::text[], $2::text[], $3::timestamptz[],"
                " $4::timestamptz[], $5::timestamptz[]) AS u(tenant_id, id, tick, next, due)"
                " WHERE c.tenant_id = u.tenant_id AND c.id = u.id AND c.next_due_at = u.due",
                *map(list, zip(*updates, strict=True)),
            )
        self.fired += len(outgoing)
        return len(rows)

    async def _fire_scheduled(self, now: datetime) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT s.tenant_id, s.id, s.workflow, s.input::text AS input,"
                " s.metadata::text AS metadata, s.run_id, w.current_version_id AS version_id"
                " FROM scheduled_runs s LEFT JOIN workflows w"
                " ON w.tenant_id = s.tenant_id AND w.name = s.workflow"
                " WHERE s.fired_at IS NULL AND s.run_at <= $1 ORDER BY s.run_at LIMIT $2"
                " FOR UPDATE OF s SKIP LOCKED",
                now, self._batch_size,
            )
            if not rows:
                return 0
            outgoing: list[Outgoing] = []
            for row in rows:
                if row["version_id"] is None:
                    log.warning("scheduled run %s: workflow %r of %s is not registered; dropped",
                                row["id"], row["workflow"], row["tenant_id"],
                                extra=_ids(row) | {"run_id": row["run_id"]})
                    continue
                outgoing.append(_trigger(row["tenant_id"], row["run_id"], row, "schedule"))
            await jetstream.publish_batch(self._js, outgoing)
            await conn.execute(
                "UPDATE scheduled_runs s SET fired_at = $3 FROM unnest($1::text[], $2::text[])"
                " AS u(tenant_id, id) WHERE s.tenant_id = u.tenant_id AND s.id = u.id"
                " AND s.fired_at IS NULL",
                [r["tenant_id"] for r in rows], [r["id"] for r in rows], now,
            )
        self.fired += len(outgoing)
        return len(rows)
