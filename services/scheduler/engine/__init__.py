"""The scheduler's engine: applies commands, reports, timers and worker changes to the
in-memory runs and tasks, and says what to write and send for each batch.

`Engine` is the one entry point (the service, the tests and the benches use nothing else
of the engine's internals). It is a one-way door: behind it, one module per job, and each
helper receives only the collaborators it uses — the run and task tables, the batch's clock
and effects sink (`_batch.py`), the timer heap, the assigner — plus, as callbacks, the few
state-machine transitions it may cause. No helper imports the state machine, and the engine
imports neither asyncpg nor persistence (pyproject.toml's import-linter contracts):

- `_machine.py`      the task / run state machine: every transition, fenced by state and
                     attempt, and the assignment of admitted tasks to free worker slots;
- `admission/`       what a run or task must pass before it starts: concurrency keys
                     (`concurrency.py`), rate limits (`ratelimit.py`) and the engine-side
                     gate over both (`gate.py`);
- `assign.py`        ready queues and worker slots (`fairqueue.py`: their turn-taking);
- `_timers.py`       timeouts and retry times (a heap in memory, some rows in PostgreSQL);
- `_recovery.py`     reloading after a restart, reconciling with (re)registered and lost
                     workers;
- `_durable.py`      durable tasks: the log of their waits, wake-ups, durable slots;
- `_inbox.py`        signals and waitpoint completions sent to a run, until a wait takes them;
- `_fork.py`         a forked run's reused tasks and kept durable log;
- `_conditions.py`   DAG conditions (wait_for, skip_if, cancel_if);
- `_outbox.py`       assignments, cancellations and state transitions to publish;
- `_history.py`      run history and attempt rows;
- `_children.py`     child runs: the parent → children index and the cancel cascade;
- `_batch.py`        the batch being applied: its clock and its Effects.

The data these share with persistence (durable log entries, concurrency holders, rate-limit
starts, history rows, timer kinds) are plain records in `services/scheduler/records.py`.

A batch: `begin(now_ms)`, then any of the handlers, `fire_timers()`, and `finish()`, which
returns the batch's Effects for the service to write in one transaction
(persistence/batch.py).
"""

from __future__ import annotations

from libs.common.messages import (
    CancelRun,
    ReplayRun,
    SignalRun,
    TaskReport,
    TriggerRun,
    WaitSatisfied,
    WorkerInfo,
)
from libs.common.specs import WorkflowSpec
from services.scheduler.effects import Effects
from services.scheduler.engine._children import Children
from services.scheduler.engine._machine import StateMachine
from services.scheduler.engine._recovery import Recovery
from services.scheduler.engine._timers import TIMER_BATCH
from services.scheduler.engine.admission.concurrency import Concurrency
from services.scheduler.engine.admission.ratelimit import PER_MS, RateLimiter
from services.scheduler.engine.assign import Assigner
from services.scheduler.model import RUN_TERMINAL, Run, Task
from services.scheduler.records import (
    TIMER_EXEC,
    TIMER_RETRY,
    TIMER_SCHED,
    Admission,
    Entry,
    Holder,
    InboxItem,
    LimitDef,
    SemRef,
)

__all__ = ["TIMER_BATCH", "TIMER_EXEC", "TIMER_RETRY", "TIMER_SCHED", "Engine"]


class Engine:
    """The scheduler's decisions for the runs it owns, one batch at a time."""

    def __init__(self) -> None:
        m = self._m = StateMachine()
        self._recovery = Recovery(
            m.batch, m.runs, m.tasks, m.assigner, m.timers, m.gate, requeue_lost=m.requeue_lost,
        )
        self._children = Children(m.runs, cancel=m.cancel)

    # state, read by the service, metrics and tests -----------------------------------
    @property
    def runs(self) -> dict[str, Run]:
        return self._m.runs

    @property
    def tasks(self) -> dict[str, Task]:
        return self._m.tasks

    @property
    def assigner(self) -> Assigner:
        return self._m.assigner

    @property
    def resolved_inputs(self) -> dict[str, bytes]:
        """Offloaded run inputs fetched for CEL keys (run id -> JSON), until the run ends."""
        return self._m.gate.resolved_inputs

    @property
    def conc(self) -> Concurrency:
        return self._m.gate.conc

    @property
    def limits(self) -> RateLimiter:
        return self._m.gate.limits

    @property
    def executing(self) -> dict[tuple[str, int], tuple[str, str, str]]:
        """(task id, attempt) -> (tenant, run id, worker id) of attempts holding slots."""
        return self._m.gate.executing

    @property
    def now_ms(self) -> int:
        return self._m.batch.now_ms

    @now_ms.setter
    def now_ms(self, value: int) -> None:
        self._m.batch.now_ms = value

    # batch lifecycle ----------------------------------------------------------------
    def begin(self, now_ms: int) -> None:
        self._m.begin(now_ms)

    def finish(self) -> Effects:
        """Assign free slots, then hand over the batch's effects."""
        fx = self._m.finish()
        self._children.after_batch(fx)
        return fx

    # loading after a restart (see _recovery.py for the order) -------------------------
    def adopt(self, run: Run) -> None:
        self._recovery.adopt(run)
        self._children.link(run)

    def restore_holder(self, holder: Holder, refs: list[SemRef]) -> None:
        self._recovery.restore_holder(holder, refs)

    def restore_executing(
        self, tenant: str, task_id: str, attempt: int, run_id: str, worker_id: str
    ) -> None:
        self._recovery.restore_executing(tenant, task_id, attempt, run_id, worker_id)

    def restore_admission(self, adm: Admission) -> None:
        self._recovery.restore_admission(adm)

    def release_stale_holders(self) -> None:
        self._recovery.release_stale_holders()

    def adopt_timer(self, tenant: str, task_id: str, kind: str, attempt: int, due_ms: int) -> None:
        self._recovery.adopt_timer(tenant, task_id, kind, attempt, due_ms)

    def restore_durable(self, entry: Entry) -> None:
        """A durable log entry read back after the runs (see _durable.py)."""
        self._m.durable.restore(entry)

    def restore_inbox(self, item: InboxItem) -> None:
        """A run's inbox row read back after the runs (see _inbox.py), in seq order."""
        self._m.inbox.restore(item)

    def define_limit(self, tenant: str, key: str, limit: int, per: str, burst: int | None) -> None:
        """A rate limit defined (or changed) through the API."""
        self._m.gate.limits.define(tenant, key, LimitDef(limit, PER_MS[per], burst))

    # commands -----------------------------------------------------------------------
    def trigger(self, tenant: str, cmd: TriggerRun, spec: WorkflowSpec) -> None:
        self._m.trigger(tenant, cmd, spec)
        self._children.triggered(tenant, cmd)

    def cancel(self, tenant: str, cmd: CancelRun) -> None:
        self._m.cancel(tenant, cmd)

    def replay(self, tenant: str, cmd: ReplayRun) -> None:
        self._m.replay(tenant, cmd)

    def run_lookups(self) -> list[tuple[str, str]]:
        """(tenant, run id) of runs durable tasks wait for that are not in memory: the service
        reads their status before the next batch and passes it to `runs_ended`."""
        return self._m.durable.take_run_lookups()

    def has_run_lookups(self) -> bool:
        return bool(self._m.durable.run_lookups)

    def runs_ended(self, statuses: dict[str, str]) -> None:
        """Statuses read for `run_lookups`: the ended ones complete their waits."""
        for run_id, status in statuses.items():
            if status in RUN_TERMINAL:
                self._m.durable.run_ended(run_id, status)

    def wait_satisfied(self, tenant: str, cmd: WaitSatisfied) -> None:
        """The matcher saw an event that satisfies a durable wait or a wait_for condition."""
        self._m.durable.satisfied(tenant, cmd)

    def signal(self, tenant: str, cmd: SignalRun) -> None:
        """A signal or waitpoint completion sent to a run (docs/interaction.md)."""
        self._m.inbox.receive(tenant, cmd)

    # child runs (see _children.py) ----------------------------------------------------
    def parent_to_look_up(self, tenant: str, cmd: TriggerRun) -> tuple[str, str] | None:
        """(tenant, parent run id) of a child trigger whose parent is no longer in memory:
        the service reads its status before the batch (`note_parent_statuses`)."""
        return self._children.parent_to_look_up(tenant, cmd)

    def note_parent_statuses(self, statuses: dict[str, str]) -> None:
        self._children.note_parent_statuses(statuses)

    def children_of(self, run_id: str) -> set[str]:
        """The run's child runs that are still active here."""
        return self._children.children_of(run_id)

    # workers ------------------------------------------------------------------------
    def report(self, tenant: str, rep: TaskReport) -> None:
        self._m.report(tenant, rep)

    def worker_seen(self, info: WorkerInfo) -> None:
        known = self._m.assigner.workers.get(info.worker_id)
        new_session = bool(info.session) and (known is None or known.info.session != info.session)
        self._recovery.worker_seen(info)
        self._m.durable.worker_seen(info, new_session and bool(info.registered_ms))

    def worker_lost(self, worker_id: str) -> None:
        self._m.durable.worker_lost(worker_id)  # first: it requeues attempts holding no slot
        self._recovery.worker_lost(worker_id)

    # timers -------------------------------------------------------------------------
    def next_timer_ms(self) -> int | None:
        """When the engine next needs to run with no message: a timer or a rate-limit wake."""
        due = [d for d in (self._m.timers.next_due_ms(), self._m.gate.limits.next_wake_ms())
               if d is not None]
        return min(due) if due else None

    def fire_timers(self, limit: int = TIMER_BATCH) -> int:
        return self._m.fire_timers(limit)

    # checks -------------------------------------------------------------------------
    def max_running(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(tenant, key) -> (holders, max_runs), for invariant checks and tests."""
        return {sid: (len(s.holders), s.max_runs) for sid, s in self._m.gate.conc.sems.items()}
