"""The replicator service: durable consumers on EVT and TASK → batched inserts into the OLAP store.

Each consumer hands its fetched batch to the Batcher and acks only after the insert returned,
so a crash loses nothing (redelivery) and duplicates nothing (dedupe keys, see libs/common/olap).
In embedded mode (chDB) it also answers tenant-scoped reads on `ratchet.olap.query`, because
only the process that opened a chDB directory may read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge

from libs.common import jetstream, memory, olap, subjects
from libs.common.jetstream import BatchConsumer, Rejected
from libs.common.log_messages import LOG_BATCH_DECODER, LOG_REPLICATOR_DURABLE
from libs.common.messages import STATE_CHANGES_DECODER
from libs.common.olap import OlapBackend, OlapError, Row
from libs.common.service import Service
from libs.common.settings import Settings
from libs.common.subjects import Stream
from services.replicator import retention, rows
from services.replicator.batcher import Batcher
from services.replicator.lock import DataDirLock

log = logging.getLogger(__name__)

LAG = Gauge(
    "ratchet_replicator_lag_messages",
    "Messages in the stream not yet in the OLAP store (consumer num_pending + num_ack_pending)",
    ["consumer"],
)
ROWS = Counter("ratchet_replicator_rows_total", "Rows inserted into the OLAP store", ["table"])
SKIPPED = Counter(
    "ratchet_replicator_skipped_total", "Messages acked without a row (not ours to read)",
    ["consumer"],
)

QUERY_BACKLOG = 256  # pending OLAP requests before NATS drops them (the requester times out)
# What one pull request may bring per consumer (the server stops sending past it). A state
# changes message is ~60 KB under load: without it a replicator catching up fetched 2,000 of
# them (120 MB) per consumer at once.
PULL_BYTES = jetstream.MIN_PULL_BYTES


@dataclass(frozen=True, slots=True)
class Feed:
    """One durable consumer: nats-server 2.9 allows one filter subject per consumer."""

    durable: str
    stream: Stream
    filter_subject: str
    table: str


FEEDS = (
    Feed("replicator-evt", Stream.EVT, subjects.EVT_ALL, olap.EVENTS),
    # Task and run transitions travel together (one StateChanges per scheduler batch).
    Feed("replicator-changes", Stream.TASK, subjects.TASK_CHANGES_ALL, olap.TASK_EVENTS),
    Feed("replicator-match", Stream.TASK, subjects.TASK_MATCH_ALL, olap.MATCHES),
    Feed(LOG_REPLICATOR_DURABLE, Stream.LOG, subjects.LOGS_ALL, olap.TASK_LOGS),
)


class ReplicatorService(Service):
    name = "replicator"

    def __init__(
        self,
        settings: Settings,
        *,
        fetch_batch: int = 2000,
        max_rows: int = 5000,
        max_bytes: int = 8 * 1024 * 1024,
        # Rows wait up to this long to share an insert. Every chDB insert has a large fixed
        # cost (a new part, then merges): at 100 tasks/s, 0.2 s made the replicator the
        # second-largest CPU user per task (1.9-2.5 ms); 1 s brings it to 0.6-0.7 ms and the
        # task path's p99 down with it. Analytics and logs become readable ~1 s later.
        linger_s: float = 1.0,
        lag_interval_s: float = 10.0,  # a gauge for dashboards; each probe asks NATS 4 times
    ) -> None:
        super().__init__(settings)
        self._fetch_batch = fetch_batch
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._linger_s = linger_s
        self._lag_interval_s = lag_interval_s
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self.backend: OlapBackend | None = None
        self._batcher: Batcher | None = None
        self._consumers: list[BatchConsumer] = []
        self._query_sub: Subscription | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Embedded mode only: this process owns the chDB directory (lock.py).
        self._lock: DataDirLock | None = (
            None if settings.clickhouse_url else DataDirLock(settings.data_path)
        )

    # lifecycle ----------------------------------------------------------------------
    async def _start(self) -> None:
        s = self.settings
        if self._lock is not None:
            self._lock.acquire()  # first: a refused replicator has touched nothing
        memory.tune_malloc()  # large insert bodies are mapped and unmapped whole
        self._nc = await jetstream.connect(s, "replicator")
        self._js = self._nc.jetstream()
        await jetstream.provision(self._js, s)
        self.backend = olap.open_backend(s)
        await olap.ensure_schema(self.backend)
        await retention.apply(self.backend, s.retention_days)
        await self._backfill_if_empty()
        if isinstance(self.backend, olap.ChdbBackend):
            kib = await asyncio.to_thread(self.backend.release_startup_pages)
            log.info("released %d MiB of the engine's start-up pages", kib // 1024)
        self._batcher = Batcher(self.backend, max_rows=self._max_rows, max_bytes=self._max_bytes,
                                linger_s=self._linger_s)
        self._batcher.start()
        handlers: dict[str, Callable[[list[Msg]], Awaitable[Rejected | None]]] = {
            olap.EVENTS: self._on_events,
            olap.TASK_EVENTS: self._on_changes,
            olap.MATCHES: self._on_matches,
            olap.TASK_LOGS: self._on_logs,
        }
        self._consumers = [
            BatchConsumer(
                self._js, stream=feed.stream, durable=feed.durable,
                filter_subject=feed.filter_subject, handler=handlers[feed.table],
                batch_size=self._fetch_batch, max_deliver=s.max_deliver,
                max_bytes=PULL_BYTES,
            )
            for feed in FEEDS
        ]
        for consumer in self._consumers:
            await consumer.start()
        if not s.clickhouse_url:
            self._query_sub = await self._nc.subscribe(
                subjects.OLAP_QUERY, queue="replicator", cb=self._on_query,
                pending_msgs_limit=QUERY_BACKLOG,
            )
        self._lag_task = asyncio.create_task(self._watch_lag(), name="replicator-lag")

    async def _stop(self) -> None:
        self._stopping.set()
        if self._query_sub is not None:
            with contextlib.suppress(Exception):
                await self._query_sub.unsubscribe()
        for consumer in self._consumers:
            await consumer.stop()
        if self._batcher is not None:
            await self._batcher.stop()
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        if self.backend is not None:
            await self.backend.close()
        if self._lock is not None:
            self._lock.release()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()

    async def _backfill_if_empty(self) -> None:
        """A table with no rows (a new or wiped store) is rebuilt from the stream start.

        A fresh durable starts at the first message (DeliverPolicy.ALL), but an existing one
        remembers what it acked into the lost store, so it is deleted and recreated. Rereading
        into a table that is empty only because nothing happened yet costs nothing.
        """
        assert self.backend is not None and self._js is not None
        for feed in FEEDS:
            found = await self.backend.query(f"SELECT 1 AS one FROM {feed.table} LIMIT 1")
            if found:
                continue
            with contextlib.suppress(NotFoundError):
                await self._js.delete_consumer(feed.stream.value, feed.durable)
                log.info("store table %s is empty: replaying %s from the start",
                         feed.table, feed.durable)

    # consumers ----------------------------------------------------------------------
    async def _on_changes(self, msgs: list[Msg]) -> Rejected:
        def convert(msg: Msg) -> dict[str, list[Row]]:
            changes = STATE_CHANGES_DECODER.decode(msg.data)
            return {olap.TASK_EVENTS: list(map(rows.task_event_row, changes.tasks)),
                    olap.RUNS: list(map(rows.run_row, changes.runs))}

        return await self._apply(msgs, convert, "undecodable state changes")

    async def _on_logs(self, msgs: list[Msg]) -> Rejected:
        def convert(msg: Msg) -> dict[str, list[Row]]:
            batch = LOG_BATCH_DECODER.decode(msg.data)
            return {olap.TASK_LOGS: rows.log_rows(subjects.tenant_of(msg.subject), batch)}

        return await self._apply(msgs, convert, "undecodable log batch")

    async def _on_events(self, msgs: list[Msg]) -> None:
        await self._write_lenient("replicator-evt", olap.EVENTS, msgs, _one(rows.event_row))

    async def _on_matches(self, msgs: list[Msg]) -> None:
        await self._write_lenient("replicator-match", olap.MATCHES, msgs, rows.match_rows)

    async def _write_lenient(
        self, consumer: str, table: str, msgs: list[Msg], to_rows: Callable[[Msg], list[Row]]
    ) -> None:
        # Other parties publish here (any NATS client for events, the matcher for outcomes):
        # what does not fit is skipped and acked, not dead-lettered.
        skipped = 0

        def convert(msg: Msg) -> dict[str, list[Row]]:
            nonlocal skipped
            found = to_rows(msg)
            skipped += not found
            return {table: found}

        await self._apply(msgs, convert, "")
        if skipped:
            SKIPPED.labels(consumer).inc(skipped)

    async def _apply(
        self, msgs: list[Msg], convert: Callable[[Msg], dict[str, list[Row]]], undecodable: str
    ) -> Rejected:
        """Convert a fetched batch to rows and write them a slice at a time, so what a batch
        turns into is bounded whatever its size; a message `convert` cannot decode is rejected
        (dead-lettered) with `undecodable`. A slice is what fills the batcher (its max_rows
        rows, or max_bytes of messages), so each one is inserted at once rather than after
        the linger."""
        rejected: Rejected = []
        part: list[Msg] = []
        tables: dict[str, list[Row]] = {}
        count = size = 0
        for msg in msgs:
            try:
                out = convert(msg)
            except msgspec.DecodeError as exc:
                rejected.append((msg, f"{undecodable}: {exc}"))
                continue
            part.append(msg)
            size += len(msg.data)
            for table, found in out.items():
                tables.setdefault(table, []).extend(found)
                count += len(found)
            if count >= self._max_rows or size >= self._max_bytes:
                await self._write(tables, part)
                part, tables, count, size = [], {}, 0, 0
        if part:
            await self._write(tables, part)
        return rejected

    async def _write(self, tables: dict[str, list[Row]], msgs: list[Msg]) -> None:
        assert self._batcher is not None
        try:
            await self._batcher.write(tables, sum(len(msg.data) for msg in msgs))
        except OlapError as exc:
            # The store is down: ask for redelivery later rather than raising, which would make
            # BatchConsumer retry message by message against the same outage. The ack it sends
            # after we return is a no-op for a nak'ed message.
            log.warning("store unavailable (%s); %d messages nak'ed", exc, len(msgs))
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2.0)
            return
        for table, out in tables.items():
            ROWS.labels(table).inc(len(out))

    # reads for other services (embedded mode) ---------------------------------------------
    async def _on_query(self, msg: Msg) -> None:
        assert self.backend is not None
        reply = await olap.answer_query(self.backend, msg.data)
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(reply)

    # lag -----------------------------------------------------------------------------
    async def lag(self) -> dict[str, int]:
        """Per consumer: messages in its stream not yet inserted and acked."""
        assert self._js is not None
        out: dict[str, int] = {}
        for feed in FEEDS:
            info = await self._js.consumer_info(feed.stream.value, feed.durable)
            out[feed.durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return out

    async def _watch_lag(self) -> None:
        while not self._stopping.is_set():
            try:
                for durable, value in (await self.lag()).items():
                    LAG.labels(durable).set(value)
            except Exception as exc:  # NATS hiccup: keep the last values, try again
                log.debug("lag probe failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._lag_interval_s)


def _one(to_row: Callable[[Msg], Row | None]) -> Callable[[Msg], list[Row]]:
    def to_rows(msg: Msg) -> list[Row]:
        row = to_row(msg)
        return [] if row is None else [row]
    return to_rows
