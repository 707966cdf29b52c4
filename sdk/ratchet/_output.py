"""What a task says while it runs: log lines and stream chunks, before they reach the worker.

`AttemptOutput` numbers an attempt's lines and chunks (the numbers make every publish
idempotent downstream), enforces the per-attempt log cap, and encodes chunks so that their
type survives the trip. `StreamCredit` bounds the chunks a worker holds unsent: a full buffer
makes `put_stream` wait instead of dropping. `capture_logging` routes Python `logging` records
emitted inside a task to that task's log.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ratchet import _codec

LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_LOG_MAX_LINES = 10_000
DEFAULT_LOG_MAX_CHARS = 10_000
# NATS refuses messages above its max payload (1 MiB by default); a chunk travels as one.
MAX_CHUNK_BYTES = 512 * 1024
TRUNCATION_MARKER = "[ratchet] log truncated: this attempt reached its limit of {limit} lines"

# (kind, fields) -> None; kind is "log" or "stream", fields are TaskEvent fields.
Emit = Callable[[str, dict[str, Any]], None]


class StreamBufferFull(RuntimeError):
    """A chunk could not be buffered: the worker's stream stayed full past the wait bound."""


def encode_chunk(chunk: Any) -> tuple[str, bytes]:
    """A chunk as (type, bytes): str stays text, bytes stay bytes, anything else is JSON."""
    if isinstance(chunk, bytes | bytearray | memoryview):
        data, kind = bytes(chunk), "bytes"
    elif isinstance(chunk, str):
        data, kind = chunk.encode(), "text"
    else:
        data, kind = _codec.dumps(chunk), "json"
    if len(data) > MAX_CHUNK_BYTES:
        raise ValueError(
            f"stream chunk of {len(data)} bytes exceeds the {MAX_CHUNK_BYTES}-byte limit; "
            "split it into smaller chunks"
        )
    return kind, data


def normalize_level(level: str) -> str:
    name = str(level).lower()
    if name == "warn":
        name = "warning"
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    return name


class AttemptOutput:
    """Numbers, caps and forwards one attempt's log lines and stream chunks. Thread-safe:
    a sync task runs in a thread, and the loggers it calls may run in others."""

    def __init__(
        self,
        emit: Emit | None,
        *,
        max_lines: int = DEFAULT_LOG_MAX_LINES,
        max_chars: int = DEFAULT_LOG_MAX_CHARS,
    ) -> None:
        if max_lines < 1 or max_chars < 1:
            raise ValueError("log limits must be >= 1")
        self._emit = emit
        self._max_lines = max_lines
        self._max_chars = max_chars
        self._lock = threading.Lock()
        self._log_seq = 0
        self._chunk_seq = 0

    def log(self, message: str, level: str) -> None:
        name = normalize_level(level)
        text = str(message)
        if len(text) > self._max_chars:
            text = text[: self._max_chars] + f" [ratchet] line cut at {self._max_chars} characters"
        with self._lock:
            seq = self._log_seq
            if seq > self._max_lines:
                return  # past the cap and its marker: dropped on purpose
            self._log_seq += 1
            if seq == self._max_lines:
                text, name = TRUNCATION_MARKER.format(limit=self._max_lines), "warning"
            self._send("log", {"log": text, "level": name, "seq": seq})

    def chunk(self, kind: str, data: bytes) -> None:
        """Forward a chunk already encoded by `encode_chunk`."""
        with self._lock:
            seq = self._chunk_seq
            self._chunk_seq += 1
            self._send("stream", {"chunk": data, "chunk_type": kind, "seq": seq})

    def _send(self, kind: str, fields: dict[str, Any]) -> None:
        if self._emit is not None:
            fields["ts_ms"] = int(time.time() * 1000)
            self._emit(kind, fields)


class StreamCredit:
    """At most `limit` chunks buffered in the worker and not yet written to the gRPC stream.

    Threads (sync tasks) wait on a condition; coroutines on the loop wait on an event that the
    loop-side `release` sets, so no waiter polls.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._cond = threading.Condition()
        self._room = asyncio.Event()

    def try_acquire(self) -> bool:
        with self._cond:
            if self._used >= self._limit:
                return False
            self._used += 1
            return True

    def acquire(self, timeout_s: float) -> None:
        """Block this thread until there is room; StreamBufferFull after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._used >= self._limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    if self._used >= self._limit:
                        raise StreamBufferFull(_full(self._limit, timeout_s))
            self._used += 1

    async def aacquire(self, timeout_s: float) -> None:
        """Wait on the loop until there is room; StreamBufferFull after `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            self._room.clear()
            if self.try_acquire():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StreamBufferFull(_full(self._limit, timeout_s))
            try:
                await asyncio.wait_for(self._room.wait(), remaining)
            except TimeoutError:
                continue

    def release(self, count: int) -> None:
        """Called on the worker's loop once `count` chunks were written to the stream."""
        if count <= 0:
            return
        with self._cond:
            self._used = max(0, self._used - count)
            self._cond.notify_all()
        self._room.set()


def _full(limit: int, timeout_s: float) -> str:
    return (
        f"{limit} stream chunks are waiting for the dispatcher and none left in {timeout_s}s "
        "(is the worker disconnected?)"
    )


# --- Python logging inside tasks --------------------------------------------------------

# The attempt whose task is running in this context; set only by workers that capture logs.
current_output: contextvars.ContextVar[AttemptOutput | None] = contextvars.ContextVar(
    "ratchet_current_output", default=None
)


class _TaskLogHandler(logging.Handler):
    """Forwards records emitted while a capturing worker runs a task to that task's log."""

    def emit(self, record: logging.LogRecord) -> None:
        output = current_output.get()
        if output is None or record.name.startswith("ratchet."):
            return  # not inside a task, or the SDK's own bookkeeping
        try:
            level = record.levelname.lower()
            output.log(self.format(record), level if level in LEVELS else "info")
        except Exception:
            self.handleError(record)


_handler_lock = threading.Lock()
_handler: _TaskLogHandler | None = None
_handler_users = 0


def install_capture() -> None:
    """Attach the task log handler to the root logger (once, however many workers ask)."""
    global _handler, _handler_users
    with _handler_lock:
        _handler_users += 1
        if _handler is None:
            _handler = _TaskLogHandler()
            _handler.setFormatter(logging.Formatter("%(message)s"))
            logging.getLogger().addHandler(_handler)


def uninstall_capture() -> None:
    global _handler, _handler_users
    with _handler_lock:
        _handler_users = max(0, _handler_users - 1)
        if _handler_users == 0 and _handler is not None:
            logging.getLogger().removeHandler(_handler)
            _handler = None
