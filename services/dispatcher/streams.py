"""One connected worker: its outbound queue and the conversions to and from protobuf."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from libs.common import telemetry
from libs.common.messages import (
    Assignment,
    CancelTask,
    DurableStep,
    TaskError,
    TaskReport,
    WakeTask,
    WorkerInfo,
)
from libs.common.proto import worker_pb2 as pb

EVENT_KINDS: dict[int, str] = {
    pb.STARTED: "started",
    pb.COMPLETED: "completed",
    pb.FAILED: "failed",
    pb.CANCELLED: "cancelled",
    pb.REFRESH_TIMEOUT: "refresh",
    pb.LOG: "log",
    pb.STREAM: "stream",
    pb.WAIT: "wait",
}

SETTLING = frozenset({"completed", "failed", "cancelled"})
# An error's message and traceback as relayed: enough to debug, never a poison message.
MAX_ERROR_CHARS = 16 * 1024
# Attempts remembered per worker (their run ids, to store large outputs under): a worker holds
# at most its slots, so this only bounds what a misbehaving one can make us keep.
MAX_TRACKED = 100_000

MAX_SLOTS = 10_000
MAX_ACTIONS = 1_000
MAX_HOLDING = 100_000
MAX_DURABLE_SLOTS = 1_000_000
DEFAULT_DURABLE_SLOTS = 1_000


@dataclass(slots=True, eq=False)
class WorkerConn:
    info: WorkerInfo
    outbox: asyncio.Queue[pb.DispatcherMessage]
    last_seen_ms: int
    session: str = field(default_factory=lambda: uuid.uuid4().hex)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # (task id, attempt) → run id of what was pushed to this worker and has not settled.
    runs: dict[tuple[str, int], str] = field(default_factory=dict)
    # Revision of the worker's registry entry as this dispatcher last wrote it (0: not yet).
    # Refreshes and the final delete are conditional on it, so once the worker registered
    # with another dispatcher this one can neither overwrite nor delete that entry.
    revision: int = 0

    def track(self, a: Assignment) -> None:
        if len(self.runs) >= MAX_TRACKED:
            self.runs.pop(next(iter(self.runs)))
        self.runs[(a.task_id, a.attempt)] = a.run_id


def validate_register(reg: pb.Register) -> str | None:
    """Return what is wrong with a registration, or None."""
    if not reg.name or len(reg.name) > 200:
        return "register.name must be 1-200 characters"
    if not 1 <= reg.slots <= MAX_SLOTS:
        return f"register.slots must be between 1 and {MAX_SLOTS}"
    if not reg.actions or len(reg.actions) > MAX_ACTIONS:
        return f"register.actions must list 1-{MAX_ACTIONS} actions"
    if reg.worker_id and (len(reg.worker_id) > 64 or not reg.worker_id.replace("-", "").isalnum()):
        return "register.worker_id must be up to 64 letters, digits or '-'"
    if not 0 <= reg.durable_slots <= MAX_DURABLE_SLOTS:
        return f"register.durable_slots must be between 0 and {MAX_DURABLE_SLOTS}"
    if len(reg.holding) > MAX_HOLDING:
        return f"register.holding lists more than {MAX_HOLDING} attempts"
    return None


def to_proto_assignment(a: Assignment) -> pb.Assignment:
    return pb.Assignment(
        task_id=a.task_id,
        run_id=a.run_id,
        attempt=a.attempt,
        workflow=a.workflow,
        task_name=a.task_name,
        action=a.action,
        input=a.input,
        parent_outputs=a.parent_outputs,
        additional=a.additional,
        timeout_ms=a.timeout_ms,
        metadata=a.metadata,
        traceparent=_dispatch_span(a) if a.traceparent else "",
        durable_log=[
            pb.DurableStep(position=d.position, kind=d.kind, spec=d.spec, result=d.result,
                           done=d.done)
            for d in a.durable_log
        ],
    )


def _dispatch_span(a: Assignment) -> str:
    """Record the dispatch hop of a traced run; the worker's span becomes its child."""
    return telemetry.child_traceparent(
        "ratchet.dispatcher",
        "task.dispatch",
        a.traceparent,
        {
            "ratchet.tenant": a.tenant, "ratchet.workflow": a.workflow, "ratchet.run_id": a.run_id,
            "ratchet.task_id": a.task_id, "ratchet.task_name": a.task_name,
            "ratchet.attempt": a.attempt, "ratchet.worker_id": a.worker_id,
        },
    )


def to_proto_cancel(c: CancelTask) -> pb.Cancel:
    return pb.Cancel(task_id=c.task_id, attempt=c.attempt, reason=c.reason)


def to_proto_wake(w: WakeTask) -> pb.Wake:
    return pb.Wake(task_id=w.task_id, attempt=w.attempt, position=w.position, result=w.result)


def durable_slots(reg: pb.Register) -> int:
    """0 (an SDK that predates durable tasks, or no preference) means the default."""
    return reg.durable_slots or DEFAULT_DURABLE_SLOTS


def to_report(worker_id: str, ev: pb.TaskEvent, now_ms: int) -> TaskReport | None:
    kind = EVENT_KINDS.get(ev.kind)
    if kind is None or not ev.task_id:
        return None
    error = None
    if ev.HasField("error"):
        error = TaskError(
            type=ev.error.type or "Error",
            message=_clip(ev.error.message),
            traceback=_clip(ev.error.traceback),
            non_retryable=ev.error.non_retryable,
        )
    step = None
    if kind == "wait":
        if not ev.HasField("step"):
            return None
        step = DurableStep(position=ev.step.position, kind=ev.step.kind, spec=ev.step.spec,
                           result=ev.step.result)
    return TaskReport(
        kind=kind,
        task_id=ev.task_id,
        attempt=ev.attempt,
        worker_id=worker_id,
        ts_ms=ev.ts_ms or now_ms,
        output=ev.output,
        error=error,
        refresh_ms=ev.refresh_ms,
        log=ev.log,
        step=step,
    )


def _clip(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return text[: MAX_ERROR_CHARS // 2] + f"\n… ({len(text)} characters, clipped) …\n" + text[-MAX_ERROR_CHARS // 2 :]
