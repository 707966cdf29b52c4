"""What a running task can see and do: `ctx`."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from ratchet._output import AttemptOutput, StreamBufferFull, StreamCredit, encode_chunk

EventSink = Callable[[str, dict[str, Any]], None]
# How long put_stream waits for room in the worker's buffer before raising StreamBufferFull.
STREAM_WAIT_S = 60.0


class _Named(Protocol):
    """Anything with a task name: a `Task` (defined later, on top of this module) fits."""

    @property
    def name(self) -> str: ...


class Context:
    """Per-attempt context handed to every task function as its second argument."""

    def __init__(
        self,
        *,
        run_id: str,
        task_id: str,
        task_name: str,
        workflow: str,
        attempt: int,
        parent_outputs: dict[str, Any],
        additional: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        sink: EventSink | None = None,
        output: AttemptOutput | None = None,
        stream_credit: StreamCredit | None = None,
    ) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.task_name = task_name
        self.workflow = workflow
        self.attempt = attempt
        self.metadata = dict(metadata or {})
        self._parents = parent_outputs
        self._additional = additional or {}
        self._sink = sink
        self._cancelled = threading.Event()
        # Child runs this attempt started, in order: the k-th spawn of every attempt names
        # the same child run (docs/children.md). Sync tasks may spawn from several threads.
        self._spawned = 0
        self._spawn_lock = threading.Lock()
        self._output = output if output is not None else AttemptOutput(sink)
        self._credit = stream_credit

    def parent_output(self, task: _Named | str) -> Any:
        """The output of a parent task (pass the task object or its name)."""
        name = task if isinstance(task, str) else task.name
        if name not in self._parents:
            raise KeyError(f"{name!r} is not a completed parent of {self.task_name!r}")
        return self._parents[name]

    @property
    def filter_payload(self) -> Any:
        """The payload of the event filter that triggered this run, if any."""
        return self._additional.get("filter_payload")

    def task_errors(self) -> dict[str, Any]:
        """In an on_failure task: the failed tasks' errors by task name."""
        errors = self._additional.get("task_errors")
        return dict(errors) if isinstance(errors, dict) else {}

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or the attempt timed out; stop cooperatively."""
        return self._cancelled.is_set()

    def wait_cancelled(self, timeout_s: float | None = None) -> bool:
        """Block (in a sync task) until cancelled or the timeout passes."""
        return self._cancelled.wait(timeout_s)

    def log(self, message: str, level: str = "info") -> None:
        """Add a line to this attempt's log (`r.runs.logs(run_id)`).

        Levels: debug, info, warning, error, critical. An attempt keeps up to the worker's
        `log_max_lines` lines (default 10,000) of up to `log_max_chars` characters; past that
        one truncation marker line is stored and later lines are dropped.
        """
        self._output.log(message, level)

    def put_stream(self, chunk: Any) -> None:
        """Send a chunk (str, bytes or any JSON-able value) to the run's stream subscribers.

        Chunks keep their type and order and are never dropped: when the worker's buffer is
        full this waits for room (in a sync task; up to a minute, then `StreamBufferFull`).
        An async task should `await ctx.aio_put_stream(chunk)`, which waits without blocking
        the event loop; calling this from the loop raises `StreamBufferFull` when full.
        """
        kind, data = encode_chunk(chunk)  # a bad chunk fails before it takes buffer room
        if self._credit is not None:
            if _on_loop():
                if not self._credit.try_acquire():
                    raise StreamBufferFull(
                        "the worker's stream buffer is full; use `await ctx.aio_put_stream()` "
                        "in async tasks so it can wait"
                    )
            else:
                self._credit.acquire(STREAM_WAIT_S)
        self._output.chunk(kind, data)

    async def aio_put_stream(self, chunk: Any) -> None:
        """`put_stream` for async tasks: waits for room without blocking the event loop."""
        kind, data = encode_chunk(chunk)
        if self._credit is not None:
            await self._credit.aacquire(STREAM_WAIT_S)
        self._output.chunk(kind, data)

    def refresh_timeout(self, delta: timedelta | float) -> None:
        """Extend this attempt's execution deadline to now + delta."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        self._emit("refresh", {"refresh_ms": int(seconds * 1000)})

    def _reserve_spawns(self, count: int) -> int:
        """The spawn index of the first of `count` child runs about to be started."""
        with self._spawn_lock:
            first = self._spawned
            self._spawned += count
            return first

    def _cancel(self) -> None:
        self._cancelled.set()

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink(kind, fields)


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# The context of the task running in this asyncio task or thread (the worker sets it; sync
# tasks inherit it through the executor's copied context). Triggers made while it is set start
# child runs of that task's run.
_CURRENT: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "ratchet_current_task", default=None
)


def current_context() -> Context | None:
    """The running task's context, or None outside a task."""
    return _CURRENT.get()
