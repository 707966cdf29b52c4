"""The payload store's garbage collector, run by the API.

Blobs of runs that no longer exist (deleted by retention or by hand) and of events past the
EVT stream's retention are removed by `libs.common.payloads.collect_garbage`. The work per
tick is bounded by sweeping one tenant at a time, in turn; several API replicas sweeping at
once is harmless (deletes are idempotent), only wasteful.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from libs.common.payloads import GcReport, PayloadStore, collect_garbage
from libs.common.settings import Settings

log = logging.getLogger(__name__)


class PayloadCollector:
    """Sweeps one tenant's blobs every `payload_gc_interval_s`, tenants in turn."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, store: PayloadStore) -> None:
        self._settings = settings
        self._pool = pool
        self._store = store
        self._task: asyncio.Task[None] | None = None
        self._queue: list[str] = []

    def start(self) -> None:
        if self._settings.payload_gc_interval_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="payload-gc")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep(self, tenant: str) -> GcReport:
        """Collect one tenant's garbage now."""
        s = self._settings
        report = await collect_garbage(
            self._store, self._pool, older_than_s=s.payload_gc_grace_s,
            event_retention_s=s.stream_max_age_s, tenant=tenant,
        )
        if report.deleted_run_blobs or report.deleted_event_blobs:
            log.info("payload gc: tenant %s: %d run blobs, %d event blobs deleted", tenant,
                     report.deleted_run_blobs, report.deleted_event_blobs)
        return report

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.payload_gc_interval_s)
            try:
                if not self._queue:
                    rows = await self._pool.fetch("SELECT id FROM tenants ORDER BY id")
                    self._queue = [row["id"] for row in rows]
                if self._queue:
                    await self.sweep(self._queue.pop())
            except Exception as exc:  # the store or PostgreSQL away: try again next tick
                log.warning("payload gc failed (%r)", exc)
