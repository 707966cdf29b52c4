"""What a running task can see and do: `ctx`."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from ratchet import _codec

EventSink = Callable[[str, dict[str, Any]], None]


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

    def log(self, message: str) -> None:
        self._emit("log", {"log": str(message)})

    def put_stream(self, chunk: Any) -> None:
        data = chunk if isinstance(chunk, bytes) else _codec.dumps(chunk)
        self._emit("stream", {"chunk": data})

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

    async def _await_runs(self, run_ids: list[str]) -> None:
        """Called before waiting for runs' results: a normal task simply polls (keeping its
        slot); a durable task first waits durably, holding none (DurableContext)."""

    def _cancel(self) -> None:
        self._cancelled.set()

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        if self._sink is not None:
            self._sink(kind, fields)


# The context of the task running in this asyncio task or thread (the worker sets it; sync
# tasks inherit it through the executor's copied context). Triggers made while it is set start
# child runs of that task's run.
_CURRENT: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "ratchet_current_task", default=None
)


def current_context() -> Context | None:
    """The running task's context, or None outside a task."""
    return _CURRENT.get()
