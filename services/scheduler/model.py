"""In-memory model of active runs and tasks. PostgreSQL is the durable copy.

The scheduler owns its tenants' runs: it keeps every non-terminal run in memory, applies
messages to it, and writes what changed to PostgreSQL in one transaction per batch before
acking. After a crash it rebuilds this model from PostgreSQL.

Statuses are defined once in libs/common/statuses.py; the short names the scheduler has
always used (TERMINAL, IN_FLIGHT, ...) are re-exported here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from libs.common.messages import TaskError
from libs.common.specs import TaskSpec, WorkflowSpec
from libs.common.statuses import RUN_TERMINAL, RunStatus, TaskStatus
from libs.common.statuses import TASK_FAILED_LIKE as FAILED_LIKE
from libs.common.statuses import TASK_IN_FLIGHT as IN_FLIGHT
from libs.common.statuses import TASK_TERMINAL as TERMINAL
from services.scheduler.records import Need, SemRef

__all__ = [
    "FAILED_LIKE",
    "IN_FLIGHT",
    "RUN_TERMINAL",
    "TERMINAL",
    "Run",
    "RunStatus",
    "Task",
    "TaskStatus",
    "build_run",
    "descendants",
    "task_id_for",
]

_TASK_NS = uuid.UUID("6f0c1a52-3c1e-4f7e-9a55-2d0e2f1c7a10")


def task_id_for(run_id: str, name: str) -> str:
    """Deterministic, so a redelivered trigger creates the very same task ids."""
    return uuid.uuid5(_TASK_NS, f"{run_id}/{name}").hex


@dataclass(slots=True, eq=False)
class Task:
    tenant: str
    id: str
    run_id: str
    name: str
    action: str
    spec: TaskSpec
    status: TaskStatus
    priority: int
    created_ms: int
    role: str = "task"  # task | on_failure | on_success
    attempt: int = 0
    failures: int = 0
    worker_id: str | None = None
    output: bytes | None = None
    queued_ms: int | None = None
    assigned_ms: int | None = None  # in memory only: None after a scheduler restart
    started_ms: int | None = None
    finished_ms: int | None = None
    not_before_ms: int | None = None
    deadline_ms: int | None = None  # execution deadline of the current attempt
    pending_parents: int = 0
    children: list[str] = field(default_factory=list)
    last_error: TaskError | None = None
    queue_seq: int = 0
    # Fair scheduling, all derived once when the task is first queued (see engine):
    # where a QUEUED task waits — "sem" (a concurrency key), "ready" (the assigner's
    # queues), "rate" (a rate-limit key), "" (a retry timer, or not queued).
    stage: str = ""
    group: str = ""  # round-robin fairness group inside its priority
    sem_refs: list[SemRef] | None = None  # task-level concurrency keys
    needs: list[Need] | None = None  # rate-limit units taken when it starts

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(slots=True, eq=False)
class Run:
    tenant: str
    id: str
    workflow: str
    version_id: str
    spec: WorkflowSpec
    status: RunStatus
    priority: int
    input: bytes
    created_ms: int
    metadata: dict[str, str] = field(default_factory=dict)
    additional: dict[str, bytes] = field(default_factory=dict)
    source: str = "api"
    generation: int = 0
    traceparent: str | None = None  # W3C trace context of the run (observe.py)
    finished_ms: int | None = None
    tasks: dict[str, Task] = field(default_factory=dict)
    sem_refs: list[SemRef] | None = None  # workflow-level concurrency keys
    admitted: bool = False  # holds its workflow-level keys (or has none)
    sticky_worker: str | None = None  # first worker a task of a sticky run went to
    draining: bool = False  # terminal, but attempts still winding down on workers
    # A child run's parent (engine/_children.py); a top-level run has none and depth 0.
    parent_run_id: str | None = None
    parent_task_id: str | None = None
    parent_task: str | None = None
    depth: int = 0

    def main_tasks(self) -> list[Task]:
        return [t for t in self.tasks.values() if t.role == "task"]


def build_run(run: Run) -> None:
    """Create the run's tasks from its spec: roots QUEUED-to-be, the rest PENDING."""
    spec = run.spec
    for ts in spec.tasks:
        run.tasks[ts.name] = _new_task(run, ts, "task")
    for ts in spec.tasks:
        for parent in set(ts.parents):
            run.tasks[parent].children.append(ts.name)
        run.tasks[ts.name].pending_parents = len(set(ts.parents))
    if spec.on_failure is not None:
        run.tasks[spec.on_failure.name] = _new_task(run, spec.on_failure, "on_failure")
    if spec.on_success is not None:
        run.tasks[spec.on_success.name] = _new_task(run, spec.on_success, "on_success")


def _new_task(run: Run, ts: TaskSpec, role: str) -> Task:
    return Task(
        tenant=run.tenant,
        id=task_id_for(run.id, ts.name),
        run_id=run.id,
        name=ts.name,
        action=f"{run.workflow}:{ts.name}",
        spec=ts,
        status=TaskStatus.PENDING,
        priority=run.priority,
        created_ms=run.created_ms,
        role=role,
    )


def descendants(run: Run, name: str) -> list[str]:
    seen: set[str] = set()
    stack = list(run.tasks[name].children)
    while stack:
        child = stack.pop()
        if child not in seen:
            seen.add(child)
            stack.extend(run.tasks[child].children)
    return sorted(seen)
