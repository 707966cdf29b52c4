"""Messages the engine sends: assignments and cancellations to dispatchers, transitions to
everyone watching (api, replicator).

Nothing is published here: messages go to the batch's outbox (Effects.outbox), written in the
batch transaction and relayed after commit, each with a deterministic msg-id so a relay
repeated after a crash is dropped by the stream.
"""

from __future__ import annotations

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import (
    Assignment,
    CancelTask,
    DispatchBatch,
    RunStateChanged,
    TaskStateChanged,
    encode,
)
from services.scheduler.effects import Effects
from services.scheduler.engine._history import encode_json, err_doc
from services.scheduler.model import FAILED_LIKE, Run, Task, TaskStatus


def assignment(run: Run, task: Task) -> Assignment:
    """What a worker needs to run `task`: input, parents' outputs, and for an on_failure
    hook the errors of the tasks that failed."""
    parents = {
        p: run.tasks[p].output or b"null"
        for p in task.spec.parents
        if run.tasks[p].status == TaskStatus.SUCCEEDED
    }
    additional = dict(run.additional)
    if task.role == "on_failure":
        errors = {
            t.name: err_doc(t.last_error)
            for t in run.main_tasks()
            if t.status in FAILED_LIKE and t.last_error is not None
        }
        additional["task_errors"] = encode_json(errors)
    return Assignment(
        tenant=task.tenant,
        worker_id=task.worker_id or "",
        task_id=task.id,
        run_id=run.id,
        attempt=task.attempt,
        workflow=run.workflow,
        task_name=task.name,
        action=task.action,
        input=run.input,
        parent_outputs=parents,
        additional=additional,
        timeout_ms=int(task.spec.execution_timeout_s * 1000),
        metadata=run.metadata,
        traceparent=run.traceparent,
    )


# One DispatchBatch stays well under NATS's default 1 MiB max payload: inputs and parents'
# outputs above RATCHET_PAYLOAD_INLINE_BYTES travel as references, but a batch of many inline
# ones would not fit in one message.
DISPATCH_BATCH_BYTES = 512 * 1024


def _weight(a: Assignment) -> int:
    return 512 + len(a.input) + sum(len(v) for v in a.parent_outputs.values()) + sum(
        len(v) for v in a.additional.values())


def send_assignments(fx: Effects, by_dispatcher: dict[str, list[Assignment]]) -> None:
    """DispatchBatches of at most DISPATCH_BATCH_BYTES per dispatcher (a single assignment
    larger than that goes alone; if NATS refuses it, the relay fails its attempt)."""
    for dispatcher_id, items in by_dispatcher.items():
        chunk: list[Assignment] = []
        size = 0
        for a in items:
            cost = _weight(a)
            if chunk and size + cost > DISPATCH_BATCH_BYTES:
                _send_chunk(fx, dispatcher_id, chunk)
                chunk, size = [], 0
            chunk.append(a)
            size += cost
        if chunk:
            _send_chunk(fx, dispatcher_id, chunk)


def _send_chunk(fx: Effects, dispatcher_id: str, items: list[Assignment]) -> None:
    first = items[0]
    fx.outbox.append(
        Outgoing(
            subjects.dsp(dispatcher_id),
            encode(DispatchBatch(assignments=items)),
            f"assign:{first.task_id}:{first.attempt}:{len(items)}",
        )
    )


def send_cancel(fx: Effects, task: Task, dispatcher_id: str, reason: str) -> None:
    """Ask the worker running the task's current attempt to stop it."""
    batch = DispatchBatch(
        cancels=[
            CancelTask(
                tenant=task.tenant,
                worker_id=task.worker_id or "",
                task_id=task.id,
                attempt=task.attempt,
                reason=reason,
            )
        ]
    )
    fx.outbox.append(
        Outgoing(subjects.dsp(dispatcher_id), encode(batch), f"cancel:{task.id}:{task.attempt}")
    )


def task_changed(fx: Effects, now_ms: int, run: Run, task: Task) -> None:
    """Note the task's new state for the TASK stream (bundled per tenant at batch end)."""
    msg = TaskStateChanged(
        tenant=task.tenant,
        run_id=task.run_id,
        task_id=task.id,
        task_name=task.name,
        workflow=run.workflow,
        attempt=task.attempt,
        state=task.status.value,
        ts_ms=now_ms,
        worker_id=task.worker_id or "",
        queued_ms=task.queued_ms or 0,
        started_ms=task.started_ms or 0,
        error=task.last_error if task.status in FAILED_LIKE else None,
    )
    fx.note_change(task.tenant, msg, f"{task.id}:{task.attempt}:{task.status.value}")


def run_changed(fx: Effects, now_ms: int, run: Run) -> None:
    """Note the run's new status for the TASK stream."""
    msg = RunStateChanged(
        tenant=run.tenant,
        run_id=run.id,
        workflow=run.workflow,
        status=run.status.value,
        ts_ms=now_ms,
        created_ms=run.created_ms,
        parent_run_id=run.parent_run_id,
        parent_task_id=run.parent_task_id,
    )
    fx.note_change(run.tenant, msg, f"{run.id}:{run.generation}:{run.status.value}")
