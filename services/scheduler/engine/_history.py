"""What the engine records for people to read back: run history and per-attempt rows.

History is append-only (one row per event of a run, stored per batch by persistence/); an
attempt row is the outcome of one try of a task. Both are only collected into the batch's
Effects here, never written directly.
"""

from __future__ import annotations

import msgspec

from libs.common.messages import TaskError
from services.scheduler.effects import Effects
from services.scheduler.model import Run, Task
from services.scheduler.records import AttemptRow, HistoryRow

_JSON = msgspec.json.Encoder()


def record(fx: Effects, now_ms: int, run: Run, task: Task | None, kind: str, detail: object) -> None:
    """Append one event (`run.created`, `task.retrying`, ...) to the run's history."""
    fx.history.append(
        HistoryRow(
            tenant=run.tenant,
            run_id=run.id,
            task_id=task.id if task else None,
            task_name=task.name if task else None,
            attempt=task.attempt if task else None,
            kind=kind,
            detail=_JSON.encode(detail) if detail is not None else None,
            ts_ms=now_ms,
        )
    )


def attempt_row(
    fx: Effects, now_ms: int, task: Task, err: TaskError | None, status: str | None = None
) -> None:
    """Write (or overwrite, within the batch) the row of the task's current attempt.

    `status` names an outcome the task itself does not show (LOST, or FAILED for an attempt
    that is retried); such an attempt is finished even though the task is not terminal.
    """
    fx.attempts[(task.tenant, task.id, task.attempt)] = AttemptRow(
        tenant=task.tenant,
        task_id=task.id,
        attempt=task.attempt,
        status=status or task.status.value,
        worker_id=task.worker_id,
        error=_JSON.encode(err_doc(err)) if err is not None else None,
        started_ms=task.started_ms,
        finished_ms=now_ms if (status or task.terminal) else None,
        created_ms=task.created_ms,
    )


def err_doc(err: TaskError | None) -> dict[str, object]:
    """A task error as the JSON document history, attempts and on_failure hooks carry."""
    if err is None:
        return {}
    return {
        "type": err.type,
        "message": err.message,
        "traceback": err.traceback,
        "non_retryable": err.non_retryable,
    }


def encode_json(value: object) -> bytes:
    return _JSON.encode(value)
