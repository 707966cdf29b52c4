"""Coalesce rows from concurrent consumer batches into one insert per table.

A handler calls `write()` and waits until its rows are in the store; only then does its
consumer ack. A flush happens when `max_rows` rows or `max_bytes` bytes (what their messages
weighed) are pending, or `linger_s` after the first pending row, whichever comes first. Pending
rows are bounded without a queue: every consumer has one fetched batch in flight and waits on
it, so what is pending is at most the bounds plus one handler's batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence

from libs.common import retry
from libs.common.olap import OlapBackend, OlapError, Row

log = logging.getLogger(__name__)


class Batcher:
    def __init__(
        self,
        backend: OlapBackend,
        *,
        max_rows: int = 5000,
        max_bytes: int = 8 * 1024 * 1024,
        linger_s: float = 0.2,
        insert_attempts: int = 3,
    ) -> None:
        self._backend = backend
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._attempts = insert_attempts
        self._pending: dict[str, list[Row]] = {}
        self._pending_rows = 0
        self._pending_bytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._first_at = 0.0
        self._kick = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.rows_written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="replicator-batcher")

    async def stop(self) -> None:
        """Flush what is pending, then end the loop."""
        self._stopping = True
        self._kick.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def pending(self) -> tuple[int, int]:
        """(rows, bytes) waiting for the next insert."""
        return self._pending_rows, self._pending_bytes

    async def write(self, rows_by_table: Mapping[str, Sequence[Row]], size: int = 0) -> None:
        """Return once every row is inserted; raise OlapError if the insert failed.

        `size`: what the rows weigh (the bytes of the messages they came from)."""
        count = sum(len(rows) for rows in rows_by_table.values())
        if count == 0:
            return
        if self._stopping or self._task is None:
            raise OlapError("batcher is not running")
        if self._pending_rows == 0:
            self._first_at = time.monotonic()
        for table, rows in rows_by_table.items():
            self._pending.setdefault(table, []).extend(rows)
        self._pending_rows += count
        self._pending_bytes += size
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._kick.set()
        await done

    async def _loop(self) -> None:
        while True:
            if self._pending_rows == 0:
                if self._stopping:
                    return
                self._kick.clear()
                await self._kick.wait()
                continue
            remaining = self._first_at + self._linger_s - time.monotonic()
            full = self._pending_rows >= self._max_rows or self._pending_bytes >= self._max_bytes
            if not full and remaining > 0 and not self._stopping:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), remaining)
                continue
            await self._flush()

    async def _flush(self) -> None:
        pending, waiters, count = self._pending, self._waiters, self._pending_rows
        self._pending, self._waiters, self._pending_rows = {}, [], 0
        self._pending_bytes = 0
        error: Exception | None = None
        for table, rows in pending.items():
            error = await self._insert(table, rows)
            if error is not None:
                break
        if error is None:
            self.rows_written += count
        for fut in waiters:
            if fut.done():
                continue
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(OlapError(str(error)))

    async def _insert(self, table: str, rows: list[Row]) -> Exception | None:
        # A partial failure (one table in, the next not) is safe: nothing is acked, the whole
        # batch is redelivered and the rows already in collapse on their dedupe keys.
        try:
            async for attempt in retry.policy(
                f"replicator.insert.{table}", attempts=self._attempts, timeout_s=None,
                on=lambda exc: isinstance(exc, OlapError),
            ):
                with attempt:
                    await self._backend.insert(table, rows)
        except OlapError as exc:
            log.warning("insert of %d rows into %s failed (%r)", len(rows), table, exc)
            return exc
        return None
