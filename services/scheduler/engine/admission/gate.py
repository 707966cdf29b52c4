"""Admission: what a run or a task must pass before it may start, as the engine sees it.

Two gates, in this order:
- concurrency (concurrency.py): a run takes its workflow-level keys when it is triggered, a
  task attempt its task-level keys when it is enqueued; either may wait for a slot, be
  rejected (CANCEL_NEWEST) or make older holders be cancelled (CANCEL_IN_PROGRESS);
- rate limits (ratelimit.py): a task takes its units when the assigner picks it for a
  worker, or parks until they free up.

Keys and units are CEL over the run input, evaluated once per run / task (keys.py). A slot is
held until the attempt has really stopped on its worker (`executing`), not merely until the
task settled, so the limit also covers work still winding down. Decisions are journaled into
the batch's Effects; persistence/fairness.py writes them in the batch transaction, where
persistence/rate_limit_recheck.py re-checks rate-limit starts against every scheduler's.

The gate decides; the transitions it causes (start a run's ready tasks, end a run or a task
that may never start) are the state machine's, handed to it as callbacks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from libs.common.messages import TaskError
from services.scheduler import keys
from services.scheduler.effects import Effects
from services.scheduler.engine import _history
from services.scheduler.engine._batch import Batch
from services.scheduler.engine.admission.concurrency import GRR, Arrival, Concurrency, Order
from services.scheduler.engine.admission.ratelimit import PER_MS, RateLimiter, Waiter
from services.scheduler.engine.assign import Assigner, Worker
from services.scheduler.model import IN_FLIGHT, RUN_TERMINAL, Run, Task, TaskStatus
from services.scheduler.records import Holder, LimitDef, Need, SemRef

_NO_ACTIVATION: dict[str, object] = {}
_USES_CEL_MAX = 4096  # workflow versions remembered by the "does it use CEL" cache


def run_holder(run: Run) -> Holder:
    # One holder per run across replays: a replayed run whose old attempts are still
    # winding down keeps the slot it already has instead of taking a second one.
    return Holder.of_run(run.id)


def task_holder(task: Task) -> Holder:
    return Holder.of_task(task.id, task.attempt)


class Gate:
    """Concurrency and rate-limit admission of the engine's runs and tasks."""

    def __init__(
        self,
        batch: Batch,
        runs: dict[str, Run],
        tasks: dict[str, Task],
        assigner: Assigner,
        *,
        start_ready: Callable[[Run], None],
        end_run: Callable[[Run, TaskStatus, TaskError], None],
        end_task: Callable[[Task, TaskStatus, TaskError], None],
    ) -> None:
        self._batch = batch
        self._runs = runs
        self._tasks = tasks
        self._assigner = assigner  # admitted tasks go to its ready queues
        # The transitions admission decides (the state machine's).
        self._start_ready = start_ready  # a run got its slots: queue its ready tasks
        self._end_run = end_run  # a run may never start (a bad key, CANCEL_NEWEST, evicted)
        self._end_task = end_task  # a task may never start, or is evicted
        self.conc = Concurrency()
        self.limits = RateLimiter()
        # Attempts assigned to a worker and not yet settled by it, for tasks under
        # concurrency control: (task id, attempt) -> (tenant, run id, worker id). A
        # concurrency slot is released only when its attempt has really stopped.
        self.executing: dict[tuple[str, int], tuple[str, str, str]] = {}
        self.exec_by_run: dict[str, set[tuple[str, int]]] = {}
        self.run_holders: dict[str, Holder] = {}  # run id -> its workflow-level holder
        self.deferred: list[Holder] = []  # holders admitted while loading, started next batch
        self._order = itertools.count()
        self._uses_cel: dict[str, bool] = {}  # version id -> does it evaluate CEL per run
        # Run id -> the JSON of an input that travels as a payload reference, fetched from the
        # store by the service before the engine needs it (only for runs whose workflow
        # evaluates CEL over the input); dropped when the run ends.
        self.resolved_inputs: dict[str, bytes] = {}

    # keys -----------------------------------------------------------------------------
    def activation(self, run: Run) -> dict[str, object]:
        # Converting the input to CEL values costs more than the rest of a trigger: skip it
        # for the (common) workflows with no concurrency key and no CEL in their rate limits.
        uses = self._uses_cel.get(run.version_id)
        if uses is None:
            if len(self._uses_cel) > _USES_CEL_MAX:
                self._uses_cel.clear()
            uses = self._uses_cel[run.version_id] = keys.uses_cel(run.spec)
        if not uses:
            return _NO_ACTIVATION
        return keys.activation(self.resolved_inputs.get(run.id, run.input), run.metadata)

    def order_of(self, priority: int, ms: int) -> Order:
        return (-priority, ms, next(self._order))

    def restore_order(self) -> Order:
        """Holders read back after a restart come before anything that arrives later."""
        return (0, 0, next(self._order))

    @staticmethod
    def controlled(run: Run, task: Task) -> bool:
        return bool(run.sem_refs) or bool(task.sem_refs)

    def prepare_run(self, run: Run, act: dict[str, object]) -> None:
        """Evaluate the workflow-level concurrency keys, once per run."""
        if run.sem_refs is None:
            run.sem_refs = [
                SemRef(run.tenant, f"wf:{run.workflow}:{i}:{keys.eval_key(c.key, act)}",
                       c.max_runs, c.strategy)
                for i, c in enumerate(run.spec.concurrency)
            ]

    def prepare_task(self, run: Run, task: Task, act: dict[str, object]) -> None:
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

    # concurrency ------------------------------------------------------------------------
    def admit_run(self, run: Run) -> None:
        """Pass the workflow-level concurrency gate, then queue the tasks that are ready."""
        try:
            self.prepare_run(run, self.activation(run))
        except keys.KeyError_ as exc:
            self._end_run(run, TaskStatus.FAILED, TaskError(
                type="ConcurrencyKeyError", message=str(exc), non_retryable=True))
            return
        holder = run_holder(run)
        if not run.sem_refs or self.conc.holds(holder):
            run.admitted = True
            self._start_ready(run)
            return
        run.admitted = False
        self.run_holders[run.id] = holder
        outcome, evict = self.conc.arrive(
            holder, run.sem_refs, self.order_of(run.priority, run.created_ms)
        )
        if outcome == Arrival.REJECTED:
            self._end_run(run, TaskStatus.CANCELLED, TaskError(
                type="Cancelled", message="concurrency limit reached (CANCEL_NEWEST)"))
        elif outcome == Arrival.ADMITTED:
            run.admitted = True
            self._start_ready(run)
        else:
            self._history(run, "run.waiting_for_concurrency")
        self._evict(evict)

    def enter(self, task: Task) -> None:
        """The task may start now: pass its task-level concurrency gate, then get ready."""
        run = self._runs[task.run_id]
        if task.sem_refs is None or task.needs is None:
            try:
                self.prepare_task(run, task, self.activation(run))
            except keys.KeyError_ as exc:
                self._reject(task, "KeyError", str(exc))
                return
        for need in task.needs or ():
            if not self.limits.fits_ever(task.tenant, need):
                self._reject(task, "RateLimitExceeded", f"task needs {need.units} units of"
                             f" rate limit {need.key!r}, more than it can ever grant")
                return
        if not task.sem_refs:
            self.to_ready(task)
            return
        holder = task_holder(task)
        task.stage = "sem"
        outcome, evict = self.conc.arrive(
            holder, task.sem_refs,
            self.order_of(task.priority, task.queued_ms or self._batch.now_ms),
        )
        if outcome == Arrival.REJECTED:
            self._reject(task, "Cancelled", "concurrency limit reached (CANCEL_NEWEST)",
                         cancel=True)
            return
        if outcome == Arrival.ADMITTED:
            self.to_ready(task)
        self._evict(evict)

    def to_ready(self, task: Task, *, keep_seq: bool = False) -> None:
        """Admitted: hand the task to the assigner's ready queues."""
        run = self._runs[task.run_id]
        pinned = run.sticky_worker if run.spec.sticky == "HARD" and run.sticky_worker else ""
        task.stage = "ready"
        self._assigner.enqueue(task, pinned=pinned, keep_seq=keep_seq)

    def _reject(self, task: Task, kind: str, message: str, *, cancel: bool = False) -> None:
        """End a task that may never run (a bad key, an impossible rate-limit need)."""
        err = TaskError(type=kind, message=message, non_retryable=True)
        self._end_task(task, TaskStatus.CANCELLED if cancel else TaskStatus.FAILED, err)

    def _history(self, run: Run, kind: str) -> None:
        _history.record(self._batch.fx, self._batch.now_ms, run, None, kind, None)

    def _evict(self, holders: list[Holder]) -> None:
        """CANCEL_IN_PROGRESS: cancel the oldest holders so the newcomer gets their slots."""
        reason = "cancelled for a newer run (CANCEL_IN_PROGRESS)"
        for holder in holders:
            if holder.run_id is not None:
                run = self._runs.get(holder.run_id)
                if run is not None and run.status not in RUN_TERMINAL:
                    # As a cancel command would: say why, then end what has not ended.
                    _history.record(self._batch.fx, self._batch.now_ms, run, None,
                                    "run.cancel_requested", {"reason": reason})
                    self._end_run(run, TaskStatus.CANCELLED,
                                  TaskError(type="Cancelled", message=reason))
                continue
            task = self._tasks.get(holder.task_id or "")
            if task is not None and not task.terminal and task.attempt == holder.attempt:
                self._end_task(task, TaskStatus.CANCELLED,
                               TaskError(type="Cancelled", message=reason))
            else:
                self.admitted(self.conc.release(holder))

    def admitted(self, holders: list[Holder]) -> None:
        """Holders that just got their slots: start them, or give back what nobody uses."""
        while holders:
            holder = holders.pop()
            if holder.run_id is not None:
                run = self._runs.get(holder.run_id)
                if run is not None and run.status not in RUN_TERMINAL:
                    if not run.admitted:
                        run.admitted = True
                        self._history(run, "run.admitted")
                        self._start_ready(run)
                    continue
                self.run_holders.pop(holder.run_id, None)
            else:
                task = self._tasks.get(holder.task_id or "")
                if (
                    task is not None and task.attempt == holder.attempt
                    and task.status == TaskStatus.QUEUED and task.stage == "sem"
                ):
                    self.to_ready(task)
                    continue
            holders.extend(self.conc.release(holder))

    def start_deferred(self) -> None:
        """Start what was admitted while runs were being loaded."""
        if self.deferred:
            deferred, self.deferred = self.deferred, []
            self.admitted(deferred)

    def release_queued(self, task: Task) -> None:
        """A QUEUED task settles without reaching a worker: its slot (or its place in a
        key's line) goes now. An attempt in flight keeps its slot until the worker confirms
        it stopped (`attempt_stopped`)."""
        self.admitted(self.conc.release(task_holder(task)))

    def note_executing(self, run: Run, task: Task) -> None:
        """The task was just assigned: its slots stay held until this attempt stops."""
        if self.controlled(run, task):
            assert task.worker_id is not None
            key = (task.id, task.attempt)
            self.executing[key] = (task.tenant, run.id, task.worker_id)
            self.exec_by_run.setdefault(run.id, set()).add(key)
            self._batch.fx.exec_put[(task.tenant, task.id, task.attempt)] = (run.id, task.worker_id)

    def attempt_stopped(self, task_id: str, attempt: int, worker_id: str | None) -> None:
        """An attempt has settled on its worker (or the worker is gone): free its slots."""
        key = (task_id, attempt)
        running = self.executing.get(key)
        if running is not None:
            tenant, run_id, on_worker = running
            if worker_id and on_worker != worker_id:
                return  # a report from elsewhere: the attempt may still run where it was sent
            del self.executing[key]
            fx = self._batch.fx
            fx.exec_put.pop((tenant, task_id, attempt), None)
            fx.exec_del.add((tenant, task_id, attempt))
            by_run = self.exec_by_run.get(run_id)
            if by_run is not None:
                by_run.discard(key)
                if not by_run:
                    del self.exec_by_run[run_id]
            self.release_run_if_idle(run_id)
        task = self._tasks.get(task_id)
        if task is not None and task.attempt == attempt and (
            task.status == TaskStatus.QUEUED or task.status in IN_FLIGHT
        ):
            return
        self.admitted(self.conc.release(Holder.of_task(task_id, attempt)))

    def release_run_if_idle(self, run_id: str) -> None:
        """A finished run gives back its workflow-level slots once no attempt still runs."""
        holder = self.run_holders.get(run_id)
        if holder is None or self.exec_by_run.get(run_id):
            return
        run = self._runs.get(run_id)
        if run is not None and run.status not in RUN_TERMINAL:
            return
        del self.run_holders[run_id]
        self.admitted(self.conc.release(holder))

    # rate limits ------------------------------------------------------------------------
    def take_units(self, task: Task, worker: Worker) -> bool:
        """Take the task's rate-limit units as it starts, or park it until they free up."""
        if not task.needs:
            return True
        waiter = Waiter(task.id, task.attempt, task.priority, task.group, task.queue_seq)
        if self.limits.take_or_park(task.tenant, task.needs, self._batch.now_ms, waiter):
            return True
        task.stage = "rate"
        return False

    def _rate_parked(self, task_id: str, attempt: int) -> bool:
        task = self._tasks.get(task_id)
        return (
            task is not None and task.attempt == attempt
            and task.status == TaskStatus.QUEUED and task.stage == "rate"
        )

    def unpark_rate_limited(self) -> None:
        for task_id, _attempt in self.limits.due(self._batch.now_ms, self._rate_parked):
            self.to_ready(self._tasks[task_id], keep_seq=True)

    # bookkeeping ------------------------------------------------------------------------
    def journal(self, fx: Effects) -> None:
        """Move what the semaphores and limiters decided into this batch's effects."""
        for k in self.conc.journal_del:
            fx.holders_put.pop(k, None)
            fx.holders_del.add(k)
        fx.holders_put.update(self.conc.journal_put)
        self.conc.journal_put = {}
        self.conc.journal_del = set()
        fx.admissions.extend(self.limits.journal)
        self.limits.journal = []
