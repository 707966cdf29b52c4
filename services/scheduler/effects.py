"""What one batch changed: rows to write and messages to relay, flushed in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.common.jetstream import Outgoing
from services.scheduler.model import Run, Task

TimerKey = tuple[str, str, str]  # (tenant, task_id, kind)


@dataclass(slots=True)
class AttemptRow:
    tenant: str
    task_id: str
    attempt: int
    status: str
    worker_id: str | None
    error: bytes | None  # JSON
    started_ms: int | None
    finished_ms: int | None


@dataclass(slots=True)
class HistoryRow:
    tenant: str
    run_id: str
    task_id: str | None
    task_name: str | None
    attempt: int | None
    kind: str
    detail: bytes | None  # JSON
    ts_ms: int


@dataclass(slots=True)
class Effects:
    tasks: dict[str, Task] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    attempts: dict[tuple[str, str, int], AttemptRow] = field(default_factory=dict)
    history: list[HistoryRow] = field(default_factory=list)
    outbox: list[Outgoing] = field(default_factory=list)
    timers_put: dict[TimerKey, tuple[int, int]] = field(default_factory=dict)  # attempt, due
    timers_del: set[TimerKey] = field(default_factory=set)
    finished_runs: list[Run] = field(default_factory=list)

    def touch_task(self, task: Task) -> None:
        self.tasks[task.id] = task

    def touch_run(self, run: Run) -> None:
        self.runs[run.id] = run

    def put_timer(self, key: TimerKey, attempt: int, due_ms: int) -> None:
        self.timers_del.discard(key)
        self.timers_put[key] = (attempt, due_ms)

    def del_timer(self, key: TimerKey) -> None:
        self.timers_put.pop(key, None)
        self.timers_del.add(key)

    def empty(self) -> bool:
        return not (
            self.tasks
            or self.runs
            or self.attempts
            or self.history
            or self.outbox
            or self.timers_put
            or self.timers_del
        )
