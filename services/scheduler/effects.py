"""What one batch changed: rows to write and messages to relay, flushed in one transaction.

The engine fills an `Effects` while it applies a batch (engine/); persistence writes it in
the batch's transaction (persistence/batch.py). Its rows are the records of records.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import (
    RunStateChanged,
    RunStateSet,
    StateChanges,
    TaskStateChanged,
    encode,
)
from services.scheduler.model import Run, Task
from services.scheduler.records import (
    Admission,
    AttemptRow,
    Entry,
    HistoryRow,
    HolderRow,
    InboxItem,
    SemRef,
    TimerKey,
)

# What a batch tells the API and the replicator: transitions, and runs whose state was set.
Change = TaskStateChanged | RunStateChanged | RunStateSet
# Transitions per StateChanges message: a few hundred bytes each, well under NATS's 1 MB.
CHANGES_PER_MESSAGE = 500


@dataclass(slots=True)
class DurableWrites:
    """What one batch changed in the durable tables (engine/_durable.py decides them,
    persistence/durable.py writes them)."""

    entries: dict[tuple[str, str, int], Entry] = field(default_factory=dict)
    # (tenant, task id, position, index, key, scope, expression, registered ms)
    event_put: list[tuple[str, str, int, int, str, str | None, str, int]] = field(
        default_factory=list
    )
    event_del: set[tuple[str, str, int]] = field(default_factory=set)
    reset: set[tuple[str, str]] = field(default_factory=set)  # (tenant, task id): log dropped
    # runs' inbox rows (engine/_inbox.py) and latest states: (tenant, run id) -> entry
    inbox: dict[tuple[str, str, str], InboxItem] = field(default_factory=dict)
    states: dict[tuple[str, str], Entry] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.entries or self.event_put or self.event_del or self.reset
                    or self.inbox or self.states)


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
    # fair scheduling: concurrency holders, attempts still executing, rate-limit starts
    holders_put: dict[HolderRow, SemRef] = field(default_factory=dict)
    holders_del: set[HolderRow] = field(default_factory=set)
    exec_put: dict[tuple[str, str, int], tuple[str, str]] = field(default_factory=dict)
    exec_del: set[tuple[str, str, int]] = field(default_factory=set)  # tenant, task, attempt
    admissions: list[Admission] = field(default_factory=list)
    # durable tasks' log rows and event conditions (engine/_durable.py), set by finish()
    durable: DurableWrites | None = None
    # transitions per tenant, relayed as StateChanges messages (see bundle_changes)
    changes: dict[str, list[tuple[Change, str]]] = field(default_factory=dict)
    # the transitions already bundled, kept for metrics and traces (scheduler/observe.py)
    bundled: list[list[tuple[Change, str]]] = field(default_factory=list)

    def note_change(self, tenant: str, change: Change, key: str) -> None:
        """Record a transition; `key` names it uniquely (it seeds the message's msg-id)."""
        self.changes.setdefault(tenant, []).append((change, key))

    def bundle_changes(self) -> None:
        """Turn the batch's transitions into a few StateChanges messages on the outbox.

        The msg-id is derived from the transitions a message carries, so the same batch
        relayed twice (after a crash) is deduplicated by the stream.
        """
        for tenant, items in self.changes.items():
            for i in range(0, len(items), CHANGES_PER_MESSAGE):
                chunk = items[i : i + CHANGES_PER_MESSAGE]
                msg = StateChanges(
                    tasks=[c for c, _ in chunk if isinstance(c, TaskStateChanged)],
                    runs=[c for c, _ in chunk if isinstance(c, RunStateChanged)],
                    states=[c for c, _ in chunk if isinstance(c, RunStateSet)],
                )
                msg_id = f"changes:{chunk[0][1]}:{chunk[-1][1]}:{len(chunk)}"
                self.outbox.append(Outgoing(subjects.task_changes(tenant), encode(msg), msg_id))
        self.bundled.extend(self.changes.values())
        self.changes.clear()

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

    def fairness_empty(self) -> bool:
        """Nothing for the fair-scheduling tables (most batches of most workloads)."""
        return not (
            self.holders_put or self.holders_del or self.exec_put or self.exec_del
            or self.admissions
        )

    def durable_empty(self) -> bool:
        return self.durable is None or self.durable.empty()

    def empty(self) -> bool:
        return not (
            self.tasks
            or self.runs
            or self.attempts
            or self.history
            or self.outbox
            or self.timers_put
            or self.timers_del
            or self.holders_put
            or self.holders_del
            or self.exec_put
            or self.exec_del
            or self.admissions
            or not self.durable_empty()
        )
