"""The task state machine: applies commands, reports, timers and worker changes.

Every transition is fenced by (state, attempt): a duplicated, reordered or late message
finds the task in another state or attempt and changes nothing. Handlers only mutate the
in-memory model and record Effects; the service writes them in one transaction.
"""

from __future__ import annotations

import heapq
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
from services.scheduler.assign import Assigner
from services.scheduler.backoff import retry_delay_s
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

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()

TIMER_RETRY = "retry"
TIMER_EXEC = "exec"
TIMER_SCHED = "sched"

SETTLING_REPORTS = frozenset({"completed", "failed", "cancelled"})


class Engine:
    def __init__(self) -> None:
        self.runs: dict[str, Run] = {}
        self.tasks: dict[str, Task] = {}
        self.assigner = Assigner()
        self.fx = Effects()
        self._timers: list[tuple[int, str, str, str, int]] = []  # due, tenant, task, kind, att
        self.now_ms = 0

    # batch lifecycle ----------------------------------------------------------------
    def begin(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.fx = Effects()

    def finish(self) -> Effects:
        """Assign free slots, then hand over the batch's effects."""
        self._assign()
        fx = self.fx
        for run in fx.finished_runs:
            self.runs.pop(run.id, None)
            for task in run.tasks.values():
                self.tasks.pop(task.id, None)
        self.fx = Effects()
        return fx

    # loading ------------------------------------------------------------------------
    def adopt(self, run: Run) -> None:
        """Take a run loaded from the store into memory (after a restart or for replay)."""
        self.runs[run.id] = run
        for task in run.tasks.values():
            self.tasks[task.id] = task
            if task.status == TaskStatus.QUEUED and task.not_before_ms is None:
                self.assigner.enqueue(task)
            elif task.status in IN_FLIGHT and task.worker_id is not None:
                self.assigner.hold(task.worker_id, task.id, task.attempt)

    def adopt_timer(self, tenant: str, task_id: str, kind: str, attempt: int, due_ms: int) -> None:
        heapq.heappush(self._timers, (due_ms, tenant, task_id, kind, attempt))

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
        )
        build_run(run)
        self.runs[run.id] = run
        for task in run.tasks.values():
            self.tasks[task.id] = task
            self.fx.touch_task(task)
        self.fx.touch_run(run)
        self._history(run, None, "run.created", {"source": cmd.source})
        self._announce_run(run)
        for task in run.main_tasks():
            if task.pending_parents == 0:
                self._queue(task)

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
                self.fx.touch_task(task)
        for name in redo:
            task = run.tasks[name]
            task.pending_parents = sum(
                1 for p in set(task.spec.parents) if run.tasks[p].status != TaskStatus.SUCCEEDED
            )
        self._announce_run(run)
        for name in sorted(redo):
            task = run.tasks[name]
            if task.pending_parents == 0:
                self._queue(task)

    # reports from workers -----------------------------------------------------------
    def report(self, tenant: str, rep: TaskReport) -> None:
        task = self.tasks.get(rep.task_id)
        if task is not None and task.tenant == tenant and rep.attempt == task.attempt:
            self._apply_report(task, rep)
        # Whatever became of the task, a settling report frees that attempt's slot; slots
        # are keyed by attempt, so a late report cannot free a newer attempt's slot.
        if rep.kind in SETTLING_REPORTS:
            self.assigner.release(rep.worker_id, rep.task_id, rep.attempt)

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
        return self._timers[0][0] if self._timers else None

    def fire_timers(self, limit: int = 1000) -> int:
        fired = 0
        while self._timers and self._timers[0][0] <= self.now_ms and fired < limit:
            _due, tenant, task_id, kind, attempt = heapq.heappop(self._timers)
            fired += 1
            self.fx.del_timer((tenant, task_id, kind))
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

    def _queue(self, task: Task, not_before_ms: int | None = None) -> None:
        task.status = TaskStatus.QUEUED
        task.queued_ms = self.now_ms
        task.not_before_ms = not_before_ms
        task.deadline_ms = None
        self.fx.touch_task(task)
        self._emit_state(task)
        self._set_timer(
            task, TIMER_SCHED, self.now_ms + int(task.spec.schedule_timeout_s * 1000)
            + (not_before_ms - self.now_ms if not_before_ms else 0)
        )
        if not_before_ms is not None and not_before_ms > self.now_ms:
            self._set_timer(task, TIMER_RETRY, not_before_ms)
        else:
            task.not_before_ms = None
            self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        self.assigner.enqueue(task)

    def _settle(self, task: Task, status: TaskStatus, err: TaskError | None) -> None:
        was_in_flight = task.status in IN_FLIGHT
        if was_in_flight and status == TaskStatus.CANCELLED:
            self._cancel_on_worker(task, err.message if err else "cancelled")
        task.status = status
        task.finished_ms = self.now_ms
        task.deadline_ms = None
        if err is not None:
            task.last_error = err
        self.fx.touch_task(task)
        for kind in (TIMER_EXEC, TIMER_SCHED, TIMER_RETRY):
            self.fx.del_timer((task.tenant, task.id, kind))
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
        pairs = self.assigner.assign(self.tasks)
        if not pairs:
            return
        by_dispatcher: dict[str, list[Assignment]] = {}
        for task, worker in pairs:
            run = self.runs[task.run_id]
            task.status = TaskStatus.ASSIGNED
            task.worker_id = worker.info.worker_id
            task.assigned_ms = self.now_ms
            task.deadline_ms = self.now_ms + int(task.spec.execution_timeout_s * 1000)
            self.fx.touch_task(task)
            self.fx.del_timer((task.tenant, task.id, TIMER_SCHED))
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
        )

    def _set_timer(self, task: Task, kind: str, due_ms: int) -> None:
        key: TimerKey = (task.tenant, task.id, kind)
        self.fx.put_timer(key, task.attempt, due_ms)
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
        self.fx.outbox.append(
            Outgoing(
                subjects.task_state(task.tenant, task.status.value),
                encode(msg),
                f"state:{task.id}:{task.attempt}:{task.status.value}",
            )
        )

    def _announce_run(self, run: Run) -> None:
        msg = RunStateChanged(
            tenant=run.tenant,
            run_id=run.id,
            workflow=run.workflow,
            status=run.status.value,
            ts_ms=self.now_ms,
            created_ms=run.created_ms,
        )
        self.fx.outbox.append(
            Outgoing(
                subjects.run_state(run.tenant, run.status.value),
                encode(msg),
                f"run:{run.id}:{run.generation}:{run.status.value}",
            )
        )

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


def _err_doc(err: TaskError | None) -> dict[str, object]:
    if err is None:
        return {}
    return {
        "type": err.type,
        "message": err.message,
        "traceback": err.traceback,
        "non_retryable": err.non_retryable,
    }
