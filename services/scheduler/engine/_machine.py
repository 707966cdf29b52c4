"""The task and run state machine: every transition of a task or a run happens here.

Every transition is fenced by (state, attempt): a duplicated, reordered or late message
finds the task in another state or attempt and changes nothing. Handlers only mutate the
in-memory model and record Effects; the service writes them in one transaction.

The lifecycle (docs/design.md §3): PENDING → QUEUED → ASSIGNED → RUNNING → one of SUCCEEDED,
FAILED, CANCELLED, TIMED_OUT; hooks that do not run end SKIPPED. A failure with retries left
goes back to QUEUED with a retry time. A QUEUED task passes admission (admission/gate.py)
before it reaches the assigner's ready queues.
"""

from __future__ import annotations

from libs.common.messages import (
    Assignment,
    CancelRun,
    ReplayRun,
    RunStateSet,
    TaskError,
    TaskReport,
    TriggerRun,
)
from libs.common.specs import WorkflowSpec
from services.scheduler.backoff import retry_delay_s
from services.scheduler.effects import Effects
from services.scheduler.engine import _history, _outbox
from services.scheduler.engine._batch import Batch
from services.scheduler.engine._conditions import Conditions
from services.scheduler.engine._durable import Durable
from services.scheduler.engine._fork import seed_fork
from services.scheduler.engine._inbox import Inbox
from services.scheduler.engine._timers import TIMER_BATCH, Timers
from services.scheduler.engine.admission.gate import Gate
from services.scheduler.engine.assign import Assigner, Worker, preference
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
from services.scheduler.records import (
    TIMER_DURABLE,
    TIMER_EXEC,
    TIMER_KINDS,
    TIMER_RETRY,
    TIMER_SCHED,
)

SETTLING_REPORTS = frozenset({"completed", "failed", "cancelled"})


class StateMachine:
    """The in-memory runs and tasks of this scheduler, and the transitions between states."""

    def __init__(self) -> None:
        # The tables and the clock every helper shares; each helper gets the ones it uses,
        # and the transitions it may cause as callbacks, never the machine itself.
        self.runs: dict[str, Run] = {}
        self.tasks: dict[str, Task] = {}
        self.batch = Batch()  # the clock and the effects sink
        self.assigner = Assigner()
        self.timers = Timers()
        self.gate = Gate(
            self.batch, self.runs, self.tasks, self.assigner,
            start_ready=self.start_ready, end_run=self.end_run, end_task=self.end_task,
        )
        self.durable = Durable(  # durable tasks' logs and parked attempts
            self.batch, self.runs, self.tasks, self.timers, self.assigner,
            requeue_lost=self.requeue_lost, attempt_stopped=self.gate.attempt_stopped,
            condition_met=self._condition_met,
            take_message=lambda task, e: self.inbox.take(task, e),
        )
        self.inbox = Inbox(  # signals and waitpoint completions sent to runs
            self.batch, self.runs, pending_waits=self.durable.pending_waits,
            deliver=self.durable.deliver_message,
        )
        self.conditions = Conditions(  # wait_for / skip_if / cancel_if
            self.runs, self.durable, end_task=self.end_task, skip=self.skip, queue=self.queue,
        )

    # batch lifecycle ----------------------------------------------------------------
    def begin(self, now_ms: int) -> None:
        self.batch.begin(now_ms)

    def finish(self) -> Effects:
        """Assign free slots, then hand over the batch's effects."""
        self.gate.start_deferred()
        self.gate.unpark_rate_limited()
        self.durable.send_wakes()  # woken durable tasks take free slots before new tasks
        self.assign()
        fx = self.batch.fx
        self.gate.journal(fx)
        for tenant, run_id, task_id in sorted(self.durable.take_states_changed()):
            fx.note_change(tenant, RunStateSet(tenant=tenant, run_id=run_id, task_id=task_id,
                                               ts_ms=self.batch.now_ms),
                           f"state:{run_id}:{self.batch.now_ms}")
        fx.bundle_changes()
        for run in fx.finished_runs:
            self.runs.pop(run.id, None)
            self.gate.resolved_inputs.pop(run.id, None)
            for task in run.tasks.values():
                self.tasks.pop(task.id, None)
            self.durable.forget(list(run.tasks.values()))
            self.conditions.forget(list(run.tasks.values()))
            self.inbox.forget(run.id)
        self.timers.compact_if_due(self.tasks)
        fx.durable = self.durable.take_writes()
        fx.durable.inbox = self.inbox.take_writes()
        return self.batch.take()

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
            created_ms=self.batch.now_ms,
            metadata=dict(cmd.metadata),
            additional=dict(cmd.additional),
            source=cmd.source,
            traceparent=cmd.traceparent,
            parent_run_id=cmd.parent_run_id,
            parent_task_id=cmd.parent_task_id,
            parent_task=cmd.parent_task,
            depth=cmd.depth,
        )
        build_run(run)
        self.runs[run.id] = run
        for task in run.tasks.values():
            self.tasks[task.id] = task
            self.batch.fx.touch_task(task)
        self.batch.fx.touch_run(run)
        self.history(run, None, "run.created", {"source": cmd.source})
        if cmd.fork is not None:  # a forked run: some tasks reused (_fork.py)
            reused = seed_fork(run, cmd.fork, self.batch, self.durable, self.emit_state)
            self.history(run, None, "run.forked", {"from_run_id": cmd.fork.from_run_id,
                                                   "reused": reused})
        self.announce_run(run)
        self.gate.admit_run(run)

    def cancel(self, tenant: str, cmd: CancelRun) -> None:
        run = self.runs.get(cmd.run_id)
        if run is None or run.tenant != tenant:
            return
        self.history(run, None, "run.cancel_requested", {"reason": cmd.reason})
        for task in run.tasks.values():
            if not task.terminal:
                self.settle(task, TaskStatus.CANCELLED, TaskError(type="Cancelled", message=cmd.reason))
        self.maybe_finish(run)

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
        self.batch.fx.touch_run(run)
        self.history(run, None, "run.replayed", {"tasks": sorted(redo)})
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
                self.durable.reset(task)  # a replay starts durable tasks on a fresh log
                self.conditions.forget([task])
                self.batch.fx.touch_task(task)
        for name in redo:
            task = run.tasks[name]
            task.pending_parents = sum(
                1 for p in set(task.spec.parents) if run.tasks[p].status != TaskStatus.SUCCEEDED
            )
        self.announce_run(run)
        self.gate.admit_run(run)

    # reports from workers -----------------------------------------------------------
    def report(self, tenant: str, rep: TaskReport) -> None:
        task = self.tasks.get(rep.task_id)
        if task is not None and task.tenant == tenant and rep.attempt == task.attempt:
            self._apply_report(task, rep)
        # Whatever became of the task, a settling report frees that attempt's slot; slots
        # are keyed by attempt, so a late report cannot free a newer attempt's slot.
        if rep.kind in SETTLING_REPORTS:
            self.durable.attempt_settled(rep.worker_id, rep.task_id, rep.attempt)
            self.assigner.release(rep.worker_id, rep.task_id, rep.attempt)
            self.gate.attempt_stopped(rep.task_id, rep.attempt, rep.worker_id)

    def _apply_report(self, task: Task, rep: TaskReport) -> None:
        kind = rep.kind
        if kind == "started":
            if task.status == TaskStatus.ASSIGNED:
                task.status = TaskStatus.RUNNING
                task.started_ms = rep.ts_ms or self.batch.now_ms
                self.batch.fx.touch_task(task)
                self.attempt_row(task, None)
                self.emit_state(task)
                run = self.runs[task.run_id]
                if run.status == RunStatus.PENDING:
                    run.status = RunStatus.RUNNING
                    self.batch.fx.touch_run(run)
                    self.announce_run(run)
        elif kind == "completed":
            if task.status in IN_FLIGHT:
                task.output = rep.output or b"null"
                self.settle(task, TaskStatus.SUCCEEDED, None)
                self._after_success(task)
        elif kind == "failed" and rep.error is not None and rep.error.type == "WorkerLost":
            if task.status in IN_FLIGHT:
                self.assigner.mark_unreachable(task)
                self.requeue_lost(task)  # never reached the worker: not the task's fault
        elif kind in ("failed", "cancelled"):
            if task.status in IN_FLIGHT:
                self._fail(task, rep.error or TaskError(type="Cancelled", message="stopped"))
        elif kind == "wait":
            self.durable.on_wait(task, rep)
        elif kind == "refresh":
            if task.status in IN_FLIGHT and rep.refresh_ms > 0:
                task.deadline_ms = self.batch.now_ms + rep.refresh_ms
                self.timers.set_stored(self.batch.fx, task, TIMER_EXEC, task.deadline_ms)
                self.batch.fx.touch_task(task)

    def requeue_lost(self, task: Task) -> None:
        """The attempt never ran to an end on its worker: queue the next one, no retry spent."""
        err = TaskError(type="WorkerLost", message=f"worker {task.worker_id} was lost")
        task.last_error = err
        self.attempt_row(task, err, status="LOST")
        self.history(self.runs[task.run_id], task, "task.lost", {"worker": task.worker_id})
        task.attempt += 1
        task.worker_id = None
        self.queue(task)

    # timers -------------------------------------------------------------------------
    def fire_timers(self, limit: int = TIMER_BATCH) -> int:
        """Fire at most `limit` due timers that still have work; returns how many.

        Stale entries (their task finished, moved on to another attempt or had its deadline
        refreshed: most of the heap after a burst) are skipped without counting, since they
        write nothing, and without touching the stored row, which by then holds the task's
        current timer."""
        fired = 0
        for due, tenant, task_id, kind, attempt in self.timers.pop_due(self.batch.now_ms):
            task = self.tasks.get(task_id)
            if task is None:
                continue
            if kind == TIMER_DURABLE:
                self.durable.fire(task, attempt)  # `attempt` holds the log position here
            elif task.attempt != attempt:
                continue
            elif kind == TIMER_EXEC and task.deadline_ms is not None and due < task.deadline_ms:
                continue  # a deadline since refreshed: the stored row holds the new one
            else:
                self.timers.drop(self.batch.fx, (tenant, task_id, kind))
                self._fire(task, kind)
            fired += 1
            if fired >= limit:
                break
        return fired

    def _fire(self, task: Task, kind: str) -> None:
        if kind == TIMER_RETRY and task.status == TaskStatus.QUEUED:
            if task.not_before_ms is not None and task.not_before_ms <= self.batch.now_ms:
                task.not_before_ms = None
                self.batch.fx.touch_task(task)
                self.enqueue(task)
        elif kind == TIMER_EXEC and task.status in IN_FLIGHT:
            if task.deadline_ms is not None and task.deadline_ms <= self.batch.now_ms:
                self._timeout(task)
        elif kind == TIMER_SCHED and task.status == TaskStatus.QUEUED:
            limit_ms = int(task.spec.schedule_timeout_s * 1000)
            if task.queued_ms is not None and task.queued_ms + limit_ms <= self.batch.now_ms:
                err = TaskError(type="ScheduleTimeout", message="queued too long", non_retryable=True)
                self.settle(task, TaskStatus.TIMED_OUT, err)
                self.after_failure(task)

    def _timeout(self, task: Task) -> None:
        err = TaskError(
            type="TimeoutError",
            message=f"execution timed out after {task.spec.execution_timeout_s:g}s",
        )
        self._cancel_on_worker(task, "execution timeout")
        self._fail(task, err, timed_out=True)

    # transitions --------------------------------------------------------------------
    def _fail(self, task: Task, err: TaskError, *, timed_out: bool = False) -> None:
        task.failures += 1
        task.last_error = err
        if not err.non_retryable and task.failures <= task.spec.retries:
            self.attempt_row(task, err, status="TIMED_OUT" if timed_out else "FAILED")
            self.history(self.runs[task.run_id], task, "task.retrying", _history.err_doc(err))
            delay_ms = int(retry_delay_s(task.spec, task.failures) * 1000)
            task.attempt += 1
            task.worker_id = None
            self.queue(task, not_before_ms=self.batch.now_ms + delay_ms)
            return
        final = TaskStatus.TIMED_OUT if timed_out else TaskStatus.FAILED
        self.settle(task, final, err)
        self.after_failure(task)

    def _after_success(self, task: Task) -> None:
        run = self.runs[task.run_id]
        for name in task.children:
            child = run.tasks[name]
            if child.status == TaskStatus.PENDING:
                child.pending_parents -= 1
                if child.pending_parents <= 0:
                    self.queue(child)
        self.maybe_finish(run)

    def after_failure(self, task: Task) -> None:
        """A task ended without succeeding: its descendants can never run."""
        run = self.runs[task.run_id]
        err = TaskError(type="UpstreamFailed", message=f"parent {task.name!r} did not succeed")
        if task.role == "task":
            for name in descendants(run, task.name):
                child = run.tasks[name]
                if not child.terminal:
                    self.settle(child, TaskStatus.CANCELLED, err)
        self.maybe_finish(run)

    def maybe_finish(self, run: Run) -> None:
        """End the run once its tasks are terminal, after its on_failure/on_success hook."""
        if run.status in RUN_TERMINAL:
            return
        mains = run.main_tasks()
        if any(not t.terminal for t in mains):
            return
        failed = [t for t in mains if t.status in FAILED_LIKE]
        hook_role = "on_failure" if failed else "on_success"
        for hook in run.tasks.values():
            if hook.role == hook_role and hook.status == TaskStatus.PENDING:
                self.queue(hook)
                return
            if hook.role == hook_role and not hook.terminal:
                return
        for hook in run.tasks.values():
            if hook.role != "task" and hook.status == TaskStatus.PENDING:
                hook.status = TaskStatus.SKIPPED
                self.batch.fx.touch_task(hook)
        if not failed:
            run.status = RunStatus.SUCCEEDED
        elif all(t.status == TaskStatus.CANCELLED for t in failed) or all(
            (t.last_error is not None and t.last_error.type == "Cancelled") for t in failed
        ):
            run.status = RunStatus.CANCELLED
        else:
            run.status = RunStatus.FAILED
        run.finished_ms = self.batch.now_ms
        self.batch.fx.touch_run(run)
        self.history(run, None, f"run.{run.status.lower()}", None)
        self.announce_run(run)
        self.batch.fx.finished_runs.append(run)
        self.durable.run_ended(run.id, run.status.value)  # durable tasks awaiting this run
        self.gate.release_run_if_idle(run.id)

    def end_run(self, run: Run, status: TaskStatus, err: TaskError) -> None:
        """Settle every task that has not ended with `status`, then finish the run."""
        for task in run.tasks.values():
            if not task.terminal:
                self.settle(task, status, err)
        self.maybe_finish(run)

    def start_ready(self, run: Run) -> None:
        """Queue the run's tasks whose parents have all succeeded (the roots, at first)."""
        for task in run.main_tasks():
            if task.status == TaskStatus.PENDING and task.pending_parents <= 0:
                self.queue(task)

    def queue(self, task: Task, not_before_ms: int | None = None) -> None:
        if task.status == TaskStatus.PENDING and self.conditions.intercept(task):
            return  # first readiness of a task with DAG conditions: see _conditions.py
        task.status = TaskStatus.QUEUED
        task.stage = ""
        task.queued_ms = self.batch.now_ms
        task.not_before_ms = not_before_ms
        task.deadline_ms = None
        self.batch.fx.touch_task(task)
        self.emit_state(task)
        self.timers.set_queued(task, self.batch.now_ms)
        if not_before_ms is None or not_before_ms <= self.batch.now_ms:
            task.not_before_ms = None
            self.enqueue(task)

    def enqueue(self, task: Task) -> None:
        """The task may start now: it goes through admission to the ready queues."""
        self.gate.enter(task)

    def end_task(self, task: Task, status: TaskStatus, err: TaskError) -> None:
        """End a task that will not run (or run on): its dependants can never run either."""
        self.settle(task, status, err)
        self.after_failure(task)

    def skip(self, task: Task) -> None:
        """End a task SKIPPED: its dependants go on as after a success."""
        self.settle(task, TaskStatus.SKIPPED, None)
        self._after_success(task)

    def _condition_met(self, task: Task) -> None:
        """A wait_for condition of `task` held (its durable log entry completed)."""
        self.conditions.entry_done(task)

    def settle(self, task: Task, status: TaskStatus, err: TaskError | None) -> None:
        """Move the task to a terminal status."""
        if task.status in IN_FLIGHT and status == TaskStatus.CANCELLED:
            self._cancel_on_worker(task, err.message if err else "cancelled")
        if task.status == TaskStatus.QUEUED:
            self.gate.release_queued(task)
        task.stage = ""
        task.status = status
        task.finished_ms = self.batch.now_ms
        task.deadline_ms = None
        if err is not None:
            task.last_error = err
        self.batch.fx.touch_task(task)
        for kind in TIMER_KINDS:
            self.timers.drop(self.batch.fx, (task.tenant, task.id, kind))
        self.attempt_row(task, err)
        self.emit_state(task)

    def _cancel_on_worker(self, task: Task, reason: str) -> None:
        """Tell the worker to stop; its slot stays held until it confirms or is lost."""
        if task.worker_id is None:
            return
        worker = self.assigner.workers.get(task.worker_id)
        if worker is not None:
            _outbox.send_cancel(self.batch.fx, task, worker.info.dispatcher_id, reason)

    # assignment ---------------------------------------------------------------------
    def assign(self) -> None:
        """Give free worker slots the best admitted tasks, and tell their dispatchers."""
        pairs = self.assigner.assign(score=self._score, admit=self.gate.take_units)
        if not pairs:
            return
        by_dispatcher: dict[str, list[Assignment]] = {}
        for task, worker in pairs:
            run = self.runs[task.run_id]
            task.status = TaskStatus.ASSIGNED
            task.stage = ""
            task.worker_id = worker.info.worker_id
            task.assigned_ms = self.batch.now_ms
            if run.spec.sticky and run.sticky_worker is None:
                run.sticky_worker = task.worker_id
            self.gate.note_executing(run, task)
            task.deadline_ms = self.batch.now_ms + int(task.spec.execution_timeout_s * 1000)
            self.batch.fx.touch_task(task)
            self.timers.drop(self.batch.fx, (task.tenant, task.id, TIMER_SCHED))
            self.timers.set_stored(self.batch.fx, task, TIMER_EXEC, task.deadline_ms)
            self.emit_state(task)
            assignment = _outbox.assignment(run, task)
            if task.spec.durable:
                assignment.durable_log = self.durable.log_for(task)
            by_dispatcher.setdefault(worker.info.dispatcher_id, []).append(assignment)
        _outbox.send_assignments(self.batch.fx, by_dispatcher)

    def _score(self, task: Task, worker: Worker) -> int | None:
        return preference(self.runs[task.run_id], task, worker)

    # records ------------------------------------------------------------------------
    def history(self, run: Run, task: Task | None, kind: str, detail: object) -> None:
        _history.record(self.batch.fx, self.batch.now_ms, run, task, kind, detail)

    def attempt_row(self, task: Task, err: TaskError | None, status: str | None = None) -> None:
        _history.attempt_row(self.batch.fx, self.batch.now_ms, task, err, status)

    def emit_state(self, task: Task) -> None:
        """Record the task's new state: a history row and a transition on the stream."""
        run = self.runs[task.run_id]
        self.history(
            run, task, f"task.{task.status.lower()}",
            _history.err_doc(task.last_error) if task.status in FAILED_LIKE and task.last_error else None,
        )
        _outbox.task_changed(self.batch.fx, self.batch.now_ms, run, task)

    def announce_run(self, run: Run) -> None:
        _outbox.run_changed(self.batch.fx, self.batch.now_ms, run)
