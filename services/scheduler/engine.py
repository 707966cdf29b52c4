"""The task state machine: applies commands, reports, timers and worker changes.

Every transition is fenced by (state, attempt): a duplicated, reordered or late message
finds the task in another state or attempt and changes nothing. Handlers only mutate the
in-memory model and record Effects; the service writes them in one transaction.
"""

from __future__ import annotations

import heapq
import itertools
import logging

import msgspec

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import (
    Assignment,
    CancelRun,
    CancelTask,
    DispatchBatch,
    ReplayRun,
    RunStateChanged,
    TaskError,
    TaskReport,
    TaskStateChanged,
    TriggerRun,
    WorkerInfo,
    encode,
)
from libs.common.specs import WorkflowSpec
from services.scheduler import keys
from services.scheduler.assign import Assigner, Worker
from services.scheduler.backoff import retry_delay_s
from services.scheduler.concurrency import GRR, Arrival, Concurrency, SemRef
from services.scheduler.effects import AttemptRow, Effects, HistoryRow, TimerKey
from services.scheduler.model import (
    FAILED_LIKE,
    IN_FLIGHT,
    RUN_TERMINAL,
    Run,
    RunStatus,
    Task,
    TaskStatus,
    build_run,
    descendants,
)
from services.scheduler.ratelimit import PER_MS, Admission, LimitDef, Need, RateLimiter, Waiter

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()

TIMER_RETRY = "retry"
TIMER_EXEC = "exec"
TIMER_SCHED = "sched"
TIMER_COMPACT_MIN = 4096  # heap entries before the first compaction

SETTLING_REPORTS = frozenset({"completed", "failed", "cancelled"})


class Engine:
    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.tasks: dict[str, Task] = {}
        self.assigner = Assigner()
        self.fx = Effects()
        self._timers: list[tuple[int, str, str, str, int]] = []  # due, tenant, task, kind, att
        # Timers that have a row in PostgreSQL (or one being written): only those are deleted,
        # which spares the flush three index probes for every task that settles.
        self._stored_timers: set[TimerKey] = set()
        self._compact_timers_at = TIMER_COMPACT_MIN
        self.now_ms = 0
        self._uses_cel: dict[str, bool] = {}  # version id -> does it evaluate CEL per run
        self.conc = Concurrency()
        self.limits = RateLimiter()
        # Attempts assigned to a worker and not yet settled by it, for tasks under
        # concurrency control: (task id, attempt) -> (tenant, run id, worker id). A
        # concurrency slot is released only when its attempt has really stopped.
        self.executing: dict[tuple[str, int], tuple[str, str, str]] = {}
        self._exec_by_run: dict[str, set[tuple[str, int]]] = {}
        self._run_holders: dict[str, str] = {}  # run id -> its workflow-level holder
        self._deferred: list[str] = []  # holders admitted while loading, started next batch
        self._order = itertools.count()

    # batch lifecycle ----------------------------------------------------------------
    def begin(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.fx = Effects()

    def finish(self) -> Effects:
        """Assign free slots, then hand over the batch's effects."""
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            self._admitted(deferred)
        self._unpark_rate_limited()
        self._assign()
        self._journal()
        fx = self.fx
        fx.bundle_changes()
        for run in fx.finished_runs:
            self.runs.pop(run.id, None)
            for task in run.tasks.values():
                self.tasks.pop(task.id, None)
        if len(self._timers) > self._compact_timers_at:
            self._compact_timers()
        self.fx = Effects()
        return fx

    def _compact_timers(self) -> None:
        """Drop heap entries whose task finished or moved on to another attempt.

        Timers are not removed from the heap when a task settles (that would be a scan); they
        are skipped when they come due. With a five-minute timeout that is minutes of dead
        entries, so the heap is rebuilt whenever it has doubled since the last rebuild:
        amortized O(1) per timer, and memory stays proportional to the live tasks.
        """
        keep = [
            entry for entry in self._timers
            if (task := self.tasks.get(entry[2])) is not None and task.attempt == entry[4]
        ]
        heapq.heapify(keep)
        self._timers = keep
        self._compact_timers_at = max(TIMER_COMPACT_MIN, 2 * len(keep))

    # loading ------------------------------------------------------------------------
    def adopt(self, run: Run) -> None:
        """Take a run loaded from the store into memory (after a restart or for replay).

        Call `restore_*` first: holders and executing attempts read back from PostgreSQL
        decide which runs and tasks already own their concurrency slots.
        """
        self.runs[run.id] = run
        if run.sticky_worker is None and run.spec.sticky:
            started = [t for t in run.tasks.values() if t.worker_id and t.started_ms]
            if started:
                run.sticky_worker = min(started, key=lambda t: t.started_ms or 0).worker_id
        for task in run.tasks.values():
            self.tasks[task.id] = task
            if task.status in IN_FLIGHT and task.worker_id is not None:
                self.assigner.hold(task.worker_id, task.id, task.attempt)
        if run.status in RUN_TERMINAL:
            return  # loaded for a replay: admitted again by the replay itself
        act = self._activation(run)
        try:
            self._prepare_run(run, act)
        except keys.KeyError_:
            run.sem_refs = []  # it was admitted under the same input before; stay lenient
        holder = _run_holder(run)
        if not run.sem_refs or self.conc.holds(holder):
            run.admitted = True
        else:
            outcome, _ = self.conc.arrive(holder, run.sem_refs, self._order_of(run.priority, run.created_ms), apply_strategy=False)
            self._run_holders[run.id] = holder
            if outcome == Arrival.ADMITTED:
                self._deferred.append(holder)
        if run.sem_refs:
            self._run_holders[run.id] = holder
        for task in run.tasks.values():
            if task.terminal or task.status == TaskStatus.PENDING:
                continue
            try:
                self._prepare_task(run, task, act)
            except keys.KeyError_:
                task.sem_refs, task.needs = [], []
            if task.status in IN_FLIGHT and task.worker_id is not None and self._controlled(run, task):
                self.executing.setdefault((task.id, task.attempt), (task.tenant, run.id, task.worker_id))
                self._exec_by_run.setdefault(run.id, set()).add((task.id, task.attempt))
            if task.status == TaskStatus.QUEUED and task.queued_ms is not None:
                self._queue_timers(task, adopted=True)
            if task.status == TaskStatus.QUEUED and task.not_before_ms is None and run.admitted:
                tholder = _task_holder(task)
                if not task.sem_refs or self.conc.holds(tholder):
                    self._to_ready(task)
                else:
                    task.stage = "sem"
                    outcome, _ = self.conc.arrive(tholder, task.sem_refs, self._order_of(task.priority, task.queued_ms or 0), apply_strategy=False)
                    if outcome == Arrival.ADMITTED:
                        self._deferred.append(tholder)

    def restore_holder(self, holder: str, refs: list[SemRef]) -> None:
        self.conc.restore(holder, refs, (0, 0, next(self._order)))
        if holder.startswith("r:"):
            self._run_holders[holder.split(":")[1]] = holder

    def restore_executing(self, tenant: str, task_id: str, attempt: int, run_id: str, worker_id: str) -> None:
        self.executing[(task_id, attempt)] = (tenant, run_id, worker_id)
        self._exec_by_run.setdefault(run_id, set()).add((task_id, attempt))
        self.assigner.hold(worker_id, task_id, attempt)

    def restore_admission(self, adm: Admission) -> None:
        self.limits.restore(adm)

    def define_limit(self, tenant: str, key: str, limit: int, per: str, burst: int | None) -> None:
        self.limits.define(tenant, key, LimitDef(limit, PER_MS[per], burst))

    def release_stale_holders(self) -> None:
        """After loading: free holders nothing can release any more (leak safety net)."""
        stale: list[str] = []
        for holder, entity in self.conc.entities.items():
            if not entity.held:
                continue
            kind, ident, attempt = holder.split(":")
            if kind == "r":
                run = self.runs.get(ident)
                if (run is None or run.status in RUN_TERMINAL) and not self._exec_by_run.get(ident):
                    stale.append(holder)
            else:
                task = self.tasks.get(ident)
                live = (
                    task is not None and task.attempt == int(attempt)
                    and (task.status == TaskStatus.QUEUED or task.status in IN_FLIGHT)
                )
                if not live and (ident, int(attempt)) not in self.executing:
                    stale.append(holder)
        for holder in stale:
            self._deferred.extend(self.conc.release(holder))
            self._run_holders.pop(holder.split(":")[1], None) if holder.startswith("r:") else None

    def adopt_timer(self, tenant: str, task_id: str, kind: str, attempt: int, due_ms: int) -> None:
        heapq.heappush(self._timers, (due_ms, tenant, task_id, kind, attempt))
        self._stored_timers.add((tenant, task_id, kind))

    # commands -----------------------------------------------------------------------
    def trigger(self, tenant: str, cmd: TriggerRun, spec: WorkflowSpec) -> None:
        if cmd.run_id in self.runs:
            return
        priority = cmd.priority if cmd.priority is not None else spec.default_priority
        run = Run(
            tenant=tenant,
            id=cmd.run_id,
            workflow=cmd.workflow,
            version_id=cmd.version_id,
            spec=spec,
            status=RunStatus.PENDING,
            priority=max(1, min(3, priority)),
            input=cmd.input,
            created_ms=self.now_ms,
            metadata=dict(cmd.metadata),
            additional=dict(cmd.additional),
            source=cmd.source,
            traceparent=cmd.traceparent,
        )
        build_run(run)
        self.runs[run.id] = run
        for task in run.tasks.values():
            self.tasks[task.id] = task
            self.fx.touch_task(task)
        self.fx.touch_run(run)
        self._history(run, None, "run.created", {"source": cmd.source})
        self._announce_run(run)
        self._admit_run(run)

    def cancel(self, tenant: str, cmd: CancelRun) -> None:
        run = self.runs.get(cmd.run_id)
        if run is None or run.tenant != tenant:
            return
        self._history(run, None, "run.cancel_requested", {"reason": cmd.reason})
        for task in run.tasks.values():
            if not task.terminal:
                self._settle(task, TaskStatus.CANCELLED, TaskError(type="Cancelled", message=cmd.reason))
        self._maybe_finish(run)

    def replay(self, tenant: str, cmd: ReplayRun) -> None:
        run = self.runs.get(cmd.run_id)
        if run is None or run.tenant != tenant or run.status not in RUN_TERMINAL:
            return
        redo: set[str] = set()
        for task in run.main_tasks():
            if task.status in FAILED_LIKE:
                redo.add(task.name)
                redo.update(descendants(run, task.name))
        if not redo:
            return
        run.generation += 1
        run.status = RunStatus.RUNNING
        run.finished_ms = None
        self.fx.touch_run(run)
        self._history(run, None, "run.replayed", {"tasks": sorted(redo)})
        for task in run.tasks.values():
            if task.name in redo or task.role != "task":
                task.status = TaskStatus.PENDING
                task.attempt += 1
                task.failures = 0
                task.output = None
                task.worker_id = None
                task.last_error = None
                task.finished_ms = None
                task.sem_refs = task.needs = None
                self.fx.touch_task(task)
        for name in redo:
            task = run.tasks[name]
            task.pending_parents = sum(
                1 for p in set(task.spec.parents) if run.tasks[p].status != TaskStatus.SUCCEEDED
            )
        self._announce_run(run)
        self._admit_run(run)

    # reports from workers -----------------------------------------------------------
    def report(self, tenant: str, rep: TaskReport) -> None:
        task = self.tasks.get(rep.task_id)
        if task is not None and task.tenant == tenant and rep.attempt == task.attempt:
            self._apply_report(task, rep)
        # Whatever became of the task, a settling report frees that attempt's slot; slots
        # are keyed by attempt, so a late report cannot free a newer attempt's slot.
        if rep.kind in SETTLING_REPORTS:
            self.assigner.release(rep.worker_id, rep.task_id, rep.attempt)
            self._attempt_stopped(rep.task_id, rep.attempt, rep.worker_id)

    def _apply_report(self, task: Task, rep: TaskReport) -> None:
        kind = rep.kind
        if kind == "started":
            if task.status == TaskStatus.ASSIGNED:
                task.status = TaskStatus.RUNNING
                task.started_ms = rep.ts_ms or self.now_ms
                self.fx.touch_task(task)
                self._attempt_row(task, None)
                self._emit_state(task)
                run = self.runs[task.run_id]
                if run.status == RunStatus.PENDING:
                    run.status = RunStatus.RUNNING
                    self.fx.touch_run(run)
                    self._announce_run(run)
        elif kind == "completed":
            if task.status in IN_FLIGHT:
                task.output = rep.output or b"null"
                self._settle(task, TaskStatus.SUCCEEDED, None)
                self._after_success(task)
        elif kind == "failed" and rep.error is not None and rep.error.type == "WorkerLost":
            if task.status in IN_FLIGHT:
                self._unreachable(task)
                self._requeue_lost(task)  # never reached the worker: not the task's fault
        elif kind in ("failed", "cancelled"):
            if task.status in IN_FLIGHT:
                self._fail(task, rep.error or TaskError(type="Cancelled", message="stopped"))
        elif kind == "refresh":
            if task.status in IN_FLIGHT and rep.refresh_ms > 0:
                task.deadline_ms = self.now_ms + rep.refresh_ms
                self._set_timer(task, TIMER_EXEC, task.deadline_ms)
                self.fx.touch_task(task)

    # workers ------------------------------------------------------------------------
    def worker_seen(self, info: WorkerInfo) -> None:
        known = self.assigner.workers.get(info.worker_id)
        new_session = bool(info.session) and (known is None or known.info.session != info.session)
        self.assigner.upsert_worker(info)
        if new_session and info.registered_ms:
            self._reconcile(info)

    def _reconcile(self, info: WorkerInfo) -> None:
        """The worker (re)registered holding `info.holding`: whatever this scheduler gave it
        before that moment and it does not hold was lost on the way (a dispatcher that died
        between taking the assignment and writing it to the stream), so requeue it now
        instead of waiting for the execution timeout. Attempts assigned after the
        registration are left alone: they may still be in flight to the new stream.
        """
        holding = {(t, a) for t, a in info.holding}
        worker = self.assigner.workers[info.worker_id]
        for task_id, attempt in sorted(worker.inflight - holding):
            task = self.tasks.get(task_id)
            if (
                task is None
                or task.worker_id != info.worker_id
                or task.attempt != attempt
                or task.status not in IN_FLIGHT
            ):
                continue
            since = task.started_ms if task.status == TaskStatus.RUNNING else task.assigned_ms
            if since is None or since >= info.registered_ms:
                continue
            self.assigner.release(info.worker_id, task_id, attempt)
            self._requeue_lost(task)
            self._attempt_stopped(task_id, attempt, info.worker_id)  # never ran: free its keys

    def worker_lost(self, worker_id: str) -> None:
        held = self.assigner.remove_worker(worker_id)
        for task_id, attempt in sorted(held):
            task = self.tasks.get(task_id)
            if (
                task is not None
                and task.status in IN_FLIGHT
                and task.worker_id == worker_id
                and task.attempt == attempt
            ):
                self._requeue_lost(task)
        for task_id, attempt in sorted(held):
            self._attempt_stopped(task_id, attempt, worker_id)

    def _unreachable(self, task: Task) -> None:
        """The dispatcher could not deliver `task` to its worker (it is not connected there,
        e.g. right after a dispatcher restart, before the worker reconnects). Assigning to it
        again would bounce the same way every batch, so it gets nothing until it registers
        anew. A report about an earlier registration says nothing about the current one."""
        worker = self.assigner.workers.get(task.worker_id or "")
        if worker is None or task.assigned_ms is None:
            return
        if worker.info.registered_ms <= task.assigned_ms:
            worker.unreachable = (worker.info.session, worker.info.registered_ms)

    def _requeue_lost(self, task: Task) -> None:
        err = TaskError(type="WorkerLost", message=f"worker {task.worker_id} was lost")
        task.last_error = err
        self._attempt_row(task, err, status="LOST")
        self._history(self.runs[task.run_id], task, "task.lost", {"worker": task.worker_id})
        task.attempt += 1
        task.worker_id = None
        self._queue(task)

    # timers -------------------------------------------------------------------------
    def next_timer_ms(self) -> int | None:
        due = [d for d in (self._timers[0][0] if self._timers else None,
                           self.limits.next_wake_ms()) if d is not None]
        return min(due) if due else None

    def fire_timers(self, limit: int = 1000) -> int:
        fired = 0
        while self._timers and self._timers[0][0] <= self.now_ms and fired < limit:
            _due, tenant, task_id, kind, attempt = heapq.heappop(self._timers)
            fired += 1
            self._drop_timer((tenant, task_id, kind))
            task = self.tasks.get(task_id)
            if task is None or task.attempt != attempt:
                continue
            if kind == TIMER_RETRY and task.status == TaskStatus.QUEUED:
                if task.not_before_ms is not None and task.not_before_ms <= self.now_ms:
                    task.not_before_ms = None
                    self.fx.touch_task(task)
                    self._enqueue(task)
            elif kind == TIMER_EXEC and task.status in IN_FLIGHT:
                if task.deadline_ms is not None and task.deadline_ms <= self.now_ms:
                    self._timeout(task)
            elif kind == TIMER_SCHED and task.status == TaskStatus.QUEUED:
                limit_ms = int(task.spec.schedule_timeout_s * 1000)
                if task.queued_ms is not None and task.queued_ms + limit_ms <= self.now_ms:
                    err = TaskError(type="ScheduleTimeout", message="queued too long", non_retryable=True)
                    self._settle(task, TaskStatus.TIMED_OUT, err)
                    self._after_failure(task)
        return fired

    def _timeout(self, task: Task) -> None:
        err = TaskError(
            type="TimeoutError",
            message=f"execution timed out after {task.spec.execution_timeout_s:g}s",
        )
        self._cancel_on_worker(task, "execution timeout")
        self._fail(task, err, timed_out=True)

    # internals ----------------------------------------------------------------------
    def _fail(self, task: Task, err: TaskError, *, timed_out: bool = False) -> None:
        task.failures += 1
        task.last_error = err
        if not err.non_retryable and task.failures <= task.spec.retries:
            self._attempt_row(task, err, status="TIMED_OUT" if timed_out else "FAILED")
            self._history(self.runs[task.run_id], task, "task.retrying", _err_doc(err))
            delay_ms = int(retry_delay_s(task.spec, task.failures) * 1000)
            task.attempt += 1
            task.worker_id = None
            self._queue(task, not_before_ms=self.now_ms + delay_ms)
            return
        final = TaskStatus.TIMED_OUT if timed_out else TaskStatus.FAILED
        self._settle(task, final, err)
        self._after_failure(task)

    def _after_success(self, task: Task) -> None:
        run = self.runs[task.run_id]
        for name in task.children:
            child = run.tasks[name]
            if child.status == TaskStatus.PENDING:
                child.pending_parents -= 1
                if child.pending_parents <= 0:
                    self._queue(child)
        self._maybe_finish(run)

    def _after_failure(self, task: Task) -> None:
        run = self.runs[task.run_id]
        err = TaskError(type="UpstreamFailed", message=f"parent {task.name!r} did not succeed")
        if task.role == "task":
            for name in descendants(run, task.name):
                child = run.tasks[name]
                if not child.terminal:
                    self._settle(child, TaskStatus.CANCELLED, err)
        self._maybe_finish(run)

    def _maybe_finish(self, run: Run) -> None:
        if run.status in RUN_TERMINAL:
            return
        mains = run.main_tasks()
        if any(not t.terminal for t in mains):
            return
        failed = [t for t in mains if t.status in FAILED_LIKE]
        hook_role = "on_failure" if failed else "on_success"
        for hook in run.tasks.values():
            if hook.role == hook_role and hook.status == TaskStatus.PENDING:
                self._queue(hook)
                return
            if hook.role == hook_role and not hook.terminal:
                return
        for hook in run.tasks.values():
            if hook.role != "task" and hook.status == TaskStatus.PENDING:
                hook.status = TaskStatus.SKIPPED
                self.fx.touch_task(hook)
        if not failed:
            run.status = RunStatus.SUCCEEDED
        elif all(t.status == TaskStatus.CANCELLED for t in failed) or all(
            (t.last_error is not None and t.last_error.type == "Cancelled") for t in failed
        ):
            run.status = RunStatus.CANCELLED
        else:
            run.status = RunStatus.FAILED
        run.finished_ms = self.now_ms
        self.fx.touch_run(run)
        self._history(run, None, f"run.{run.status.lower()}", None)
        self._announce_run(run)
        self.fx.finished_runs.append(run)
        self._release_run_if_idle(run.id)

    def _queue(self, task: Task, not_before_ms: int | None = None) -> None:
        task.status = TaskStatus.QUEUED
        task.stage = ""
        task.queued_ms = self.now_ms
        task.not_before_ms = not_before_ms
        task.deadline_ms = None
        self.fx.touch_task(task)
        self._emit_state(task)
        self._queue_timers(task)
        if not_before_ms is None or not_before_ms <= self.now_ms:
            task.not_before_ms = None
            self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        """The task may start now: pass its task-level concurrency gate, then get ready."""
        run = self.runs[task.run_id]
        if task.sem_refs is None or task.needs is None:
            try:
                self._prepare_task(run, task, self._activation(run))
            except keys.KeyError_ as exc:
                self._reject(task, "KeyError", str(exc))
                return
        for need in task.needs or ():
            if not self.limits.fits_ever(task.tenant, need):
                self._reject(task, "RateLimitExceeded", f"task needs {need.units} units of"
                             f" rate limit {need.key!r}, more than it can ever grant")
                return
        if not task.sem_refs:
            self._to_ready(task)
            return
        holder = _task_holder(task)
        task.stage = "sem"
        outcome, evict = self.conc.arrive(
            holder, task.sem_refs, self._order_of(task.priority, task.queued_ms or self.now_ms)
        )
        if outcome == Arrival.REJECTED:
            self._reject(task, "Cancelled", "concurrency limit reached (CANCEL_NEWEST)", cancel=True)
            return
        if outcome == Arrival.ADMITTED:
            self._to_ready(task)
        self._evict(evict)

    def _to_ready(self, task: Task, *, keep_seq: bool = False) -> None:
        run = self.runs[task.run_id]
        pinned = run.sticky_worker if run.spec.sticky == "HARD" and run.sticky_worker else ""
        task.stage = "ready"
        self.assigner.enqueue(task, pinned=pinned, keep_seq=keep_seq)

    def _settle(self, task: Task, status: TaskStatus, err: TaskError | None) -> None:
        was_in_flight = task.status in IN_FLIGHT
        if was_in_flight and status == TaskStatus.CANCELLED:
            self._cancel_on_worker(task, err.message if err else "cancelled")
        if task.status == TaskStatus.QUEUED:
            # Never reached a worker: its slot (or its place in a key's line) goes now. An
            # attempt in flight keeps its slot until the worker confirms it stopped.
            self._admitted(self.conc.release(_task_holder(task)))
        task.stage = ""
        task.status = status
        task.finished_ms = self.now_ms
        task.deadline_ms = None
        if err is not None:
            task.last_error = err
        self.fx.touch_task(task)
        for kind in (TIMER_EXEC, TIMER_SCHED, TIMER_RETRY):
            self._drop_timer((task.tenant, task.id, kind))
        self._attempt_row(task, err)
        self._emit_state(task)

    def _cancel_on_worker(self, task: Task, reason: str) -> None:
        """Tell the worker to stop; its slot stays held until it confirms or is lost."""
        if task.worker_id is None:
            return
        worker = self.assigner.workers.get(task.worker_id)
        if worker is None:
            return
        batch = DispatchBatch(
            cancels=[
                CancelTask(
                    tenant=task.tenant,
                    worker_id=task.worker_id,
                    task_id=task.id,
                    attempt=task.attempt,
                    reason=reason,
                )
            ]
        )
        self.fx.outbox.append(
            Outgoing(
                subjects.dsp(worker.info.dispatcher_id),
                encode(batch),
                f"cancel:{task.id}:{task.attempt}",
            )
        )

    def _assign(self) -> None:
        pairs = self.assigner.assign(score=self._score, admit=self._admit)
        if not pairs:
            return
        by_dispatcher: dict[str, list[Assignment]] = {}
        for task, worker in pairs:
            run = self.runs[task.run_id]
            task.status = TaskStatus.ASSIGNED
            task.stage = ""
            task.worker_id = worker.info.worker_id
            task.assigned_ms = self.now_ms
            if run.spec.sticky and run.sticky_worker is None:
                run.sticky_worker = task.worker_id
            if self._controlled(run, task):
                key = (task.id, task.attempt)
                self.executing[key] = (task.tenant, run.id, task.worker_id)
                self._exec_by_run.setdefault(run.id, set()).add(key)
                self.fx.exec_put[(task.tenant, task.id, task.attempt)] = (run.id, task.worker_id)
            task.deadline_ms = self.now_ms + int(task.spec.execution_timeout_s * 1000)
            self.fx.touch_task(task)
            self._drop_timer((task.tenant, task.id, TIMER_SCHED))
            self._set_timer(task, TIMER_EXEC, task.deadline_ms)
            self._emit_state(task)
            by_dispatcher.setdefault(worker.info.dispatcher_id, []).append(
                self._assignment(run, task)
            )
        for dispatcher_id, items in by_dispatcher.items():
            first = items[0]
            self.fx.outbox.append(
                Outgoing(
                    subjects.dsp(dispatcher_id),
                    encode(DispatchBatch(assignments=items)),
                    f"assign:{first.task_id}:{first.attempt}:{len(items)}",
                )
            )

    def _drop_timer(self, key: TimerKey) -> None:
        if key in self._stored_timers:
            self._stored_timers.discard(key)
            self.fx.del_timer(key)

    def _assignment(self, run: Run, task: Task) -> Assignment:
        parents = {
            p: run.tasks[p].output or b"null"
            for p in task.spec.parents
            if run.tasks[p].status == TaskStatus.SUCCEEDED
        }
        additional = dict(run.additional)
        if task.role == "on_failure":
            errors = {
                t.name: _err_doc(t.last_error)
                for t in run.main_tasks()
                if t.status in FAILED_LIKE and t.last_error is not None
            }
            additional["task_errors"] = _JSON.encode(errors)
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

    def _queue_timers(self, task: Task, *, adopted: bool = False) -> None:
        """A queued task's schedule timeout and, after a failure, its retry time. Both follow
        from the task row (queued_at, not_before) and its spec, so they live in memory only:
        adopt() sets them again after a restart. One timer row fewer to write and delete."""
        assert task.queued_ms is not None
        not_before = task.not_before_ms
        limit_ms = int(task.spec.schedule_timeout_s * 1000)
        due = (not_before if not_before else task.queued_ms) + limit_ms
        heapq.heappush(self._timers, (due, task.tenant, task.id, TIMER_SCHED, task.attempt))
        # A queued task waiting for its retry time is enqueued when this fires (at once if due).
        if not_before is not None and (adopted or not_before > self.now_ms):
            heapq.heappush(self._timers, (not_before, task.tenant, task.id, TIMER_RETRY, task.attempt))

    def _set_timer(self, task: Task, kind: str, due_ms: int) -> None:
        """A timer kept in PostgreSQL too (execution timeouts: the assignment time is not)."""
        key: TimerKey = (task.tenant, task.id, kind)
        self.fx.put_timer(key, task.attempt, due_ms)
        self._stored_timers.add(key)
        heapq.heappush(self._timers, (due_ms, task.tenant, task.id, kind, task.attempt))

    def _attempt_row(self, task: Task, err: TaskError | None, status: str | None = None) -> None:
        self.fx.attempts[(task.tenant, task.id, task.attempt)] = AttemptRow(
            tenant=task.tenant,
            task_id=task.id,
            attempt=task.attempt,
            status=status or task.status.value,
            worker_id=task.worker_id,
            error=_JSON.encode(_err_doc(err)) if err is not None else None,
            started_ms=task.started_ms,
            finished_ms=self.now_ms if (status or task.terminal) else None,
        )

    def _emit_state(self, task: Task) -> None:
        run = self.runs[task.run_id]
        self._history(
            run, task, f"task.{task.status.lower()}",
            _err_doc(task.last_error) if task.status in FAILED_LIKE and task.last_error else None,
        )
        msg = TaskStateChanged(
            tenant=task.tenant,
            run_id=task.run_id,
            task_id=task.id,
            task_name=task.name,
            workflow=run.workflow,
            attempt=task.attempt,
            state=task.status.value,
            ts_ms=self.now_ms,
            worker_id=task.worker_id or "",
            queued_ms=task.queued_ms or 0,
            started_ms=task.started_ms or 0,
            error=task.last_error if task.status in FAILED_LIKE else None,
        )
        self.fx.note_change(task.tenant, msg, f"{task.id}:{task.attempt}:{task.status.value}")

    def _announce_run(self, run: Run) -> None:
        msg = RunStateChanged(
            tenant=run.tenant,
            run_id=run.id,
            workflow=run.workflow,
            status=run.status.value,
            ts_ms=self.now_ms,
            created_ms=run.created_ms,
        )
        self.fx.note_change(run.tenant, msg, f"{run.id}:{run.generation}:{run.status.value}")

    def _history(self, run: Run, task: Task | None, kind: str, detail: object) -> None:
        self.fx.history.append(
            HistoryRow(
                tenant=run.tenant,
                run_id=run.id,
                task_id=task.id if task else None,
                task_name=task.name if task else None,
                attempt=task.attempt if task else None,
                kind=kind,
                detail=_JSON.encode(detail) if detail is not None else None,
                ts_ms=self.now_ms,
            )
        )

    # fair scheduling ------------------------------------------------------------------
    def _activation(self, run: Run) -> dict[str, object]:
        # Converting the input to CEL values costs more than the rest of a trigger: skip it
        # for the (common) workflows with no concurrency key and no CEL in their rate limits.
        uses = self._uses_cel.get(run.version_id)
        if uses is None:
            if len(self._uses_cel) > 4096:
                self._uses_cel.clear()
            uses = self._uses_cel[run.version_id] = _uses_cel(run.spec)
        if not uses:
            return _NO_ACTIVATION
        return keys.activation(run.input, run.metadata)

    def _order_of(self, priority: int, ms: int) -> tuple[int, int, int]:
        return (-priority, ms, next(self._order))

    @staticmethod
    def _controlled(run: Run, task: Task) -> bool:
        return bool(run.sem_refs) or bool(task.sem_refs)

    def _prepare_run(self, run: Run, act: dict[str, object]) -> None:
        """Evaluate the workflow-level concurrency keys, once per run."""
        if run.sem_refs is None:
            run.sem_refs = [
                SemRef(run.tenant, f"wf:{run.workflow}:{i}:{keys.eval_key(c.key, act)}",
                       c.max_runs, c.strategy)
                for i, c in enumerate(run.spec.concurrency)
            ]

    def _prepare_task(self, run: Run, task: Task, act: dict[str, object]) -> None:
        """Evaluate the task's concurrency keys and rate-limit needs, once per task."""
        if task.sem_refs is None:
            task.sem_refs = [
                SemRef(task.tenant, f"task:{task.action}:{i}:{keys.eval_key(c.key, act)}",
                       c.max_runs, c.strategy)
                for i, c in enumerate(task.spec.concurrency)
            ]
            task.group = "|".join(
                ref.key for ref in [*(run.sem_refs or ()), *task.sem_refs] if ref.strategy == GRR
            )
        if task.needs is None:
            needs: list[Need] = []
            for rl in task.spec.rate_limits:
                key = rl.key if rl.key is not None else keys.eval_key(rl.dynamic_key or "", act)
                inline = (
                    LimitDef(rl.limit, PER_MS[rl.per], None)
                    if rl.limit is not None and rl.per is not None else None
                )
                need = Need(key, keys.eval_units(rl.units, act), inline)
                self.limits.remember_dynamic(task.tenant, need)
                needs.append(need)
            task.needs = needs

    def _admit_run(self, run: Run) -> None:
        """Pass the workflow-level concurrency gate, then queue the tasks that are ready."""
        try:
            self._prepare_run(run, self._activation(run))
        except keys.KeyError_ as exc:
            self._end_run(run, TaskStatus.FAILED, TaskError(
                type="ConcurrencyKeyError", message=str(exc), non_retryable=True))
            return
        holder = _run_holder(run)
        if not run.sem_refs or self.conc.holds(holder):
            run.admitted = True
            self._start_ready(run)
            return
        run.admitted = False
        self._run_holders[run.id] = holder
        outcome, evict = self.conc.arrive(
            holder, run.sem_refs, self._order_of(run.priority, run.created_ms)
        )
        if outcome == Arrival.REJECTED:
            self._end_run(run, TaskStatus.CANCELLED, TaskError(
                type="Cancelled", message="concurrency limit reached (CANCEL_NEWEST)"))
        elif outcome == Arrival.ADMITTED:
            run.admitted = True
            self._start_ready(run)
        else:
            self._history(run, None, "run.waiting_for_concurrency", None)
        self._evict(evict)

    def _start_ready(self, run: Run) -> None:
        for task in run.main_tasks():
            if task.status == TaskStatus.PENDING and task.pending_parents <= 0:
                self._queue(task)

    def _end_run(self, run: Run, status: TaskStatus, err: TaskError) -> None:
        for task in run.tasks.values():
            if not task.terminal:
                self._settle(task, status, err)
        self._maybe_finish(run)

    def _reject(self, task: Task, kind: str, message: str, *, cancel: bool = False) -> None:
        err = TaskError(type=kind, message=message, non_retryable=True)
        self._settle(task, TaskStatus.CANCELLED if cancel else TaskStatus.FAILED, err)
        self._after_failure(task)

    def _evict(self, holders: list[str]) -> None:
        """CANCEL_IN_PROGRESS: cancel the oldest holders so the newcomer gets their slots."""
        reason = "cancelled for a newer run (CANCEL_IN_PROGRESS)"
        for holder in holders:
            kind, ident, attempt = holder.split(":")
            if kind == "r":
                run = self.runs.get(ident)
                if run is not None and run.status not in RUN_TERMINAL:
                    self.cancel(run.tenant, CancelRun(run_id=run.id, reason=reason))
            else:
                task = self.tasks.get(ident)
                if task is not None and not task.terminal and task.attempt == int(attempt):
                    self._settle(task, TaskStatus.CANCELLED, TaskError(type="Cancelled", message=reason))
                    self._after_failure(task)
                else:
                    self._admitted(self.conc.release(holder))

    def _admitted(self, holders: list[str]) -> None:
        """Holders that just got their slots: start them, or give back what nobody uses."""
        while holders:
            holder = holders.pop()
            kind, ident, attempt = holder.split(":")
            if kind == "r":
                run = self.runs.get(ident)
                if run is not None and run.status not in RUN_TERMINAL:
                    if not run.admitted:
                        run.admitted = True
                        self._history(run, None, "run.admitted", None)
                        self._start_ready(run)
                    continue
                self._run_holders.pop(ident, None)
            else:
                task = self.tasks.get(ident)
                if (
                    task is not None and task.attempt == int(attempt)
                    and task.status == TaskStatus.QUEUED and task.stage == "sem"
                ):
                    self._to_ready(task)
                    continue
            holders.extend(self.conc.release(holder))

    def _attempt_stopped(self, task_id: str, attempt: int, worker_id: str | None) -> None:
        """An attempt has settled on its worker (or the worker is gone): free its slots."""
        key = (task_id, attempt)
        running = self.executing.get(key)
        if running is not None:
            tenant, run_id, on_worker = running
            if worker_id and on_worker != worker_id:
                return  # a report from elsewhere: the attempt may still run where it was sent
            del self.executing[key]
            self.fx.exec_put.pop((tenant, task_id, attempt), None)
            self.fx.exec_del.add((tenant, task_id, attempt))
            by_run = self._exec_by_run.get(run_id)
            if by_run is not None:
                by_run.discard(key)
                if not by_run:
                    del self._exec_by_run[run_id]
            self._release_run_if_idle(run_id)
        task = self.tasks.get(task_id)
        if task is not None and task.attempt == attempt and (
            task.status == TaskStatus.QUEUED or task.status in IN_FLIGHT
        ):
            return
        self._admitted(self.conc.release(f"t:{task_id}:{attempt}"))

    def _release_run_if_idle(self, run_id: str) -> None:
        holder = self._run_holders.get(run_id)
        if holder is None or self._exec_by_run.get(run_id):
            return
        run = self.runs.get(run_id)
        if run is not None and run.status not in RUN_TERMINAL:
            return
        del self._run_holders[run_id]
        self._admitted(self.conc.release(holder))

    def _score(self, task: Task, worker: Worker) -> int | None:
        """None: this worker may not take the task; else its preference (higher first)."""
        score = 0
        have = worker.info.labels
        for label, want in task.spec.desired_labels.items():
            if have.get(label) == want.value:
                score += want.weight
            elif want.required:
                return None
        run = self.runs[task.run_id]
        if run.spec.sticky and run.sticky_worker is not None:
            if run.sticky_worker == worker.info.worker_id:
                score += 1_000_000
            elif run.spec.sticky == "HARD":
                return None
        return score

    def _admit(self, task: Task, worker: Worker) -> bool:
        """Take the task's rate-limit units as it starts, or park it until they free up."""
        if not task.needs:
            return True
        waiter = Waiter(task.id, task.attempt, task.priority, task.group, task.queue_seq)
        if self.limits.take_or_park(task.tenant, task.needs, self.now_ms, waiter):
            return True
        task.stage = "rate"
        return False

    def _rate_parked(self, task_id: str, attempt: int) -> bool:
        task = self.tasks.get(task_id)
        return (
            task is not None and task.attempt == attempt
            and task.status == TaskStatus.QUEUED and task.stage == "rate"
        )

    def _unpark_rate_limited(self) -> None:
        for task_id, _attempt in self.limits.due(self.now_ms, self._rate_parked):
            self._to_ready(self.tasks[task_id], keep_seq=True)

    def _journal(self) -> None:
        """Move what the semaphores and limiters decided into this batch's effects."""
        fx = self.fx
        for k in self.conc.journal_del:
            fx.holders_put.pop(k, None)
            fx.holders_del.add(k)
        fx.holders_put.update(self.conc.journal_put)
        self.conc.journal_put = {}
        self.conc.journal_del = set()
        fx.admissions.extend(self.limits.journal)
        self.limits.journal = []

    def max_running(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(tenant, key) -> (holders, max_runs), for invariant checks and tests."""
        return {sid: (len(s.holders), s.max_runs) for sid, s in self.conc.sems.items()}



_NO_ACTIVATION: dict[str, object] = {}


def _uses_cel(spec: WorkflowSpec) -> bool:
    """Whether evaluating this workflow's keys or units needs the run's input as CEL."""
    if spec.concurrency:
        return True
    for task in [*spec.tasks, spec.on_failure, spec.on_success]:
        if task is None:
            continue
        if task.concurrency:
            return True
        for rl in task.rate_limits:
            if rl.dynamic_key is not None or isinstance(rl.units, str):
                return True
    return False


def _err_doc(err: TaskError | None) -> dict[str, object]:
    if err is None:
        return {}
    return {
        "type": err.type,
        "message": err.message,
        "traceback": err.traceback,
        "non_retryable": err.non_retryable,
    }


def _run_holder(run: Run) -> str:
    # One holder per run across replays: a replayed run whose old attempts are still
    # winding down keeps the slot it already has instead of taking a second one.
    return f"r:{run.id}:-"


def _task_holder(task: Task) -> str:
    return f"t:{task.id}:{task.attempt}"
