"""What tasks say while they run — log lines and stream chunks — from worker streams to JetStream.

They take a path of their own, next to the task reports: a bounded queue and one publisher
task, so a slow or failing log/chunk publish never holds a report back. One exception keeps
streams and logs complete: before a report that ends an attempt goes out, the dispatcher waits
(briefly, bounded) until that attempt's chunks and log lines are published, so the run cannot be
seen ending before its last chunk is readable, and the API can read a finished run's log
through the replicator's position in stream LOG (services/api/actions/logs.py).

Every line and chunk is published with a deterministic Nats-Msg-Id built from its per-attempt
sequence number; the caps per attempt are enforced here whatever the worker sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cachetools import LRUCache, TTLCache
from nats.js import JetStreamContext

from libs.common import jetstream, retry, subjects
from libs.common.jetstream import Outgoing
from libs.common.log_messages import (
    CHUNK_TYPES,
    LOG_LEVELS,
    LogBatch,
    LogLine,
    StreamChunk,
    chunk_id,
    encode,
    log_batch_id,
)
from libs.common.logs import now_ms
from libs.common.messages import Assignment, TaskReport
from libs.common.proto import worker_pb2 as pb
from libs.common.settings import Settings

log = logging.getLogger(__name__)

# What the directory may hold (estimated bytes, see Attempt.size). Attempts in flight are few
# (a worker's slots, plus its parked durable tasks); the bound only stops a flood.
LIVE_MAX_BYTES = 32 * 1024 * 1024
# A settled attempt (or one whose worker went away) is kept this long, for the log lines and
# chunks a worker sends after the report that ended it, and for a worker that reconnects
# still holding it; then forgotten. Bounded in bytes as well.
GRACE_S = 15.0
GRACE_MAX_BYTES = 4 * 1024 * 1024
QUEUE_MAX = 1024  # submissions waiting for the publisher
PUBLISH_MAX = 2000  # messages per pipelined publish
PUBLISH_RETRY_S = 10.0  # then the batch is dropped, loudly
SETTLE_WAIT_S = 2.0  # how long an ending report waits for its attempt's chunks
LOG_BATCH_BYTES = 256 * 1024
MAX_CHUNK_BYTES = 900 * 1024  # under NATS's default 1 MiB max payload with headers
MAX_CHUNKS_PER_ATTEMPT = 1_000_000
TRUNCATED = "[ratchet] log truncated: this attempt reached its limit of {limit} lines"
_SETTLING = frozenset({"completed", "failed", "cancelled"})


@dataclass(slots=True, eq=False)
class Attempt:
    """An attempt this dispatcher handed to a worker: who it belongs to and what it said."""

    tenant: str
    run_id: str
    workflow: str
    task_name: str
    lines: int = 0  # lines accepted, to stop a worker that floods with repeated seqs
    chunks: int = 0
    unpublished: int = 0  # chunks and log batches queued here and not yet acked by JetStream
    # Set when `unpublished` drops to 0; made only when a settling report has to wait.
    published: asyncio.Event | None = None

    def size(self) -> int:
        """Estimated bytes held for it: the object, its key and the directory's entry."""
        return ATTEMPT_OVERHEAD + len(self.run_id)

    def chunks_published(self) -> None:
        self.unpublished = 0
        if self.published is not None:
            self.published.set()


# The Attempt (a slotted object of 8 fields), its (task id, attempt) key with a task id of up
# to ~64 characters, the cache's bookkeeping (a dict entry, a link, a size, an expiry); tenant,
# workflow and task names are interned and shared between attempts. The unit tests check the
# estimate against tracemalloc.
ATTEMPT_OVERHEAD = 640

Key = tuple[str, int]


def _size(a: Attempt) -> int:
    return a.size()


class AttemptDirectory:
    """(task id, attempt) → Attempt for the assignments that went down this dispatcher's
    streams.

    Two parts: attempts in flight (`live`, least recently used forgotten first past
    `live_max_bytes`), and attempts that ended (settled, or their worker's stream closed),
    kept `grace_s` for late output and then forgotten (`settled`, at most `grace_max_bytes`).
    """

    def __init__(
        self,
        live_max_bytes: int = LIVE_MAX_BYTES,
        grace_s: float = GRACE_S,
        grace_max_bytes: int = GRACE_MAX_BYTES,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live: LRUCache[Key, Attempt] = LRUCache(live_max_bytes, getsizeof=_size)
        self.settled: TTLCache[Key, Attempt] = TTLCache(
            grace_max_bytes, grace_s, timer=timer, getsizeof=_size
        )

    def __len__(self) -> int:
        return len(self.live) + len(self.settled)

    @property
    def bytes(self) -> int:
        return int(self.live.currsize + self.settled.currsize)

    def remember(self, a: Assignment) -> None:
        key = (a.task_id, a.attempt)
        if key in self.live or key in self.settled:
            return
        self.live[key] = Attempt(
            sys.intern(a.tenant), a.run_id, sys.intern(a.workflow), sys.intern(a.task_name)
        )

    def get(self, tenant: str, task_id: str, attempt: int) -> Attempt | None:
        key = (task_id, attempt)
        found = self.live.get(key)
        if found is None:
            found = self.settled.get(key)
        # A worker may only speak for its own tenant's attempts.
        return found if found is not None and found.tenant == tenant else None

    def settle(self, keys: Iterable[Key]) -> None:
        """These attempts ended: keep them for the grace period only."""
        for key in keys:
            found = self.live.pop(key, None)
            if found is not None:
                self.settled[key] = found
        self.settled.expire()

    def revive(self, tenant: str, keys: Iterable[Key]) -> dict[Key, str]:
        """A worker (re)connected still holding these attempts: in flight again. Returns the
        run id of each one found."""
        out: dict[Key, str] = {}
        for key in keys:
            found = self.settled.get(key) or self.live.get(key)
            if found is None or found.tenant != tenant:
                continue
            self.settled.pop(key, None)
            self.live[key] = found
            out[key] = found.run_id
        return out

    def expire(self) -> None:
        """Forget the ended attempts whose grace period is over."""
        self.settled.expire()


@dataclass(slots=True)
class _Submission:
    messages: list[Outgoing]
    owners: list[Attempt]  # one entry per message (chunk or log batch), to count them published
    has_chunks: bool = False


class OutputPublisher:
    """Turns LOG/STREAM worker events into JetStream messages and publishes them in order."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self._js = js
        self._max_lines = settings.task_log_max_lines
        self._max_chars = settings.task_log_max_chars
        self.directory = AttemptDirectory()
        self._queue: asyncio.Queue[_Submission | None] = asyncio.Queue(maxsize=QUEUE_MAX)
        self._task: asyncio.Task[None] | None = None
        self.dropped_lines = 0
        self.unknown_attempts = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatcher-output")

    async def stop(self, timeout_s: float = PUBLISH_RETRY_S) -> None:
        """Publish what is queued (bounded), then end."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.put(None), timeout_s)
        try:
            await asyncio.wait_for(self._task, timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    # the readers' side ---------------------------------------------------------------
    async def submit(self, tenant: str, events: Iterable[pb.TaskEvent]) -> None:
        """Queue the LOG and STREAM events of one worker message.

        Chunks wait for room in the queue (backpressure on that worker's stream: chunks are
        not dropped); lines alone are dropped when the queue is full.
        """
        sub = self._convert(tenant, events)
        if not sub.messages:
            return
        for attempt in sub.owners:
            attempt.unpublished += 1
            if attempt.published is not None:
                attempt.published.clear()
        if sub.has_chunks:
            await self._queue.put(sub)
            return
        try:
            self._queue.put_nowait(sub)
        except asyncio.QueueFull:
            _published(sub)  # nothing more will come of these lines
            self.dropped_lines += len(sub.messages)
            log.warning("log queue full: dropped %d log batches", len(sub.messages))

    async def settled(self, tenant: str, reports: Iterable[TaskReport]) -> None:
        """Wait (at most SETTLE_WAIT_S) until attempts ending in `reports` have their chunks
        and log lines in JetStream."""
        waits = []
        for r in reports:
            if r.kind not in _SETTLING:
                continue
            found = self.directory.get(tenant, r.task_id, r.attempt)
            if found is not None and found.unpublished > 0:
                if found.published is None:
                    found.published = asyncio.Event()
                waits.append(found.published.wait())
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), SETTLE_WAIT_S)

    def _convert(self, tenant: str, events: Iterable[pb.TaskEvent]) -> _Submission:
        out = _Submission([], [])
        lines: list[LogLine] = []
        owner: tuple[str, int, Attempt] | None = None
        size = 0

        def flush() -> None:
            nonlocal lines, size
            if owner is not None and lines:
                task_id, attempt_no, found = owner
                batch = LogBatch(
                    run_id=found.run_id, task_id=task_id, task_name=found.task_name,
                    workflow=found.workflow, attempt=attempt_no, lines=lines,
                )
                out.messages.append(
                    Outgoing(subjects.task_logs(tenant), encode(batch), log_batch_id(batch))
                )
                out.owners.append(found)
            lines, size = [], 0

        for ev in events:
            if ev.kind not in (pb.LOG, pb.STREAM):
                continue
            found = self.directory.get(tenant, ev.task_id, ev.attempt)
            if found is None:
                self.unknown_attempts += 1
                continue
            if ev.kind == pb.STREAM:
                message = self._chunk(tenant, ev, found)
                if message is not None:
                    out.messages.append(message)
                    out.owners.append(found)
                    out.has_chunks = True
                continue
            line = self._line(ev, found)
            if line is None:
                continue
            if owner is None or owner[:2] != (ev.task_id, ev.attempt) or size > LOG_BATCH_BYTES:
                flush()
                owner = (ev.task_id, ev.attempt, found)
            lines.append(line)
            size += len(line.message) + 32
        flush()
        return out

    def _line(self, ev: pb.TaskEvent, found: Attempt) -> LogLine | None:
        """The line as stored, or None past the cap (the line at the cap becomes the marker)."""
        seq = ev.seq
        found.lines += 1
        if seq < 0 or seq > self._max_lines or found.lines > 2 * self._max_lines + 2:
            self.dropped_lines += 1
            return None
        level = ev.level.lower() if ev.level else "info"
        message = ev.log
        if seq == self._max_lines:
            level, message = "warning", TRUNCATED.format(limit=self._max_lines)
        elif len(message) > self._max_chars:
            message = message[: self._max_chars] + " [ratchet] line cut"
        return LogLine(
            seq=seq, ts_ms=ev.ts_ms or now_ms(), level=level if level in LOG_LEVELS else "info",
            message=message,
        )

    def _chunk(self, tenant: str, ev: pb.TaskEvent, found: Attempt) -> Outgoing | None:
        found.chunks += 1
        if len(ev.chunk) > MAX_CHUNK_BYTES or found.chunks > MAX_CHUNKS_PER_ATTEMPT:
            log.warning("dropped a stream chunk of task %s (%d bytes, chunk %d)",
                        ev.task_id, len(ev.chunk), found.chunks)
            return None
        kind = ev.chunk_type if ev.chunk_type in CHUNK_TYPES else "json"
        chunk = StreamChunk(
            task_id=ev.task_id, task_name=found.task_name, attempt=ev.attempt, seq=ev.seq,
            ts_ms=ev.ts_ms or now_ms(), type=kind, data=ev.chunk,  # type: ignore[arg-type]
        )
        return Outgoing(subjects.run_chunks(tenant, found.run_id), encode(chunk), chunk_id(chunk))

    # the publisher ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            subs = [] if first is None else [first]
            last = first is None
            count = len(first.messages) if first is not None else 0
            while not last and count < PUBLISH_MAX and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    last = True
                    break
                subs.append(more)
                count += len(more.messages)
            if subs:
                await self._publish(subs)
            if last:
                return

    async def _publish(self, subs: list[_Submission]) -> None:
        batch = [m for sub in subs for m in sub.messages]
        try:
            js = self._js
            await retry.call(
                "dispatcher.publish_output", lambda: jetstream.publish_batch(js, batch),
                timeout_s=PUBLISH_RETRY_S,
            )
        except Exception as exc:
            log.error("dropped %d log/stream messages after failed publishes (%r)", len(batch), exc)
        # Published or given up: either way nothing more will come of these chunks.
        for sub in subs:
            _published(sub)


def _published(sub: _Submission) -> None:
    """Count the submission's messages published (or given up on) for their attempts."""
    for found in sub.owners:
        found.unpublished -= 1
        if found.unpublished <= 0:
            found.chunks_published()

