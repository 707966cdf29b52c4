"""Recovery: rebuilding the engine from PostgreSQL after a restart, and reconciling with
workers whose registration says what they really hold.

Loading order matters (SchedulerService._load): concurrency holders and executing attempts
first (`restore_*`), so that adopted runs and tasks find the slots they already own; then
the runs (`adopt`); then `release_stale_holders` frees what nothing can release any more;
then the stored timers (`adopt_timer`).

Workers: a worker that registers anew reports the attempts it holds, and anything assigned
to it before that moment that it does not hold was lost on the way; a worker declared lost
gives back all its attempts. Either way the attempts are requeued, fenced by attempt number.
"""

from __future__ import annotations

from collections.abc import Callable

from libs.common.messages import WorkerInfo
from services.scheduler import keys
from services.scheduler.engine._batch import Batch
from services.scheduler.engine._timers import Timers
from services.scheduler.engine.admission.concurrency import Arrival
from services.scheduler.engine.admission.gate import Gate, run_holder, task_holder
from services.scheduler.engine.assign import Assigner
from services.scheduler.model import IN_FLIGHT, RUN_TERMINAL, Run, Task, TaskStatus
from services.scheduler.records import Admission, Holder, SemRef


class Recovery:
    """Puts runs, slots and timers read back from PostgreSQL into the engine's tables, and
    reconciles them with what workers say they hold."""

    def __init__(
        self,
        batch: Batch,
        runs: dict[str, Run],
        tasks: dict[str, Task],
        assigner: Assigner,
        timers: Timers,
        gate: Gate,
        *,
        requeue_lost: Callable[[Task], None],
    ) -> None:
        self._batch = batch
        self._runs = runs
        self._tasks = tasks
        self._assigner = assigner
        self._timers = timers
        self._gate = gate
        self._requeue_lost = requeue_lost  # the state machine's: an attempt lost on its worker

    # loading --------------------------------------------------------------------------
    def adopt(self, run: Run) -> None:
        """Take a run loaded from the store into memory (after a restart or for replay).

        Call `restore_*` first: holders and executing attempts read back from PostgreSQL
        decide which runs and tasks already own their concurrency slots.
        """
        gate = self._gate
        self._runs[run.id] = run
        if run.sticky_worker is None and run.spec.sticky:
            started = [t for t in run.tasks.values() if t.worker_id and t.started_ms]
            if started:
                run.sticky_worker = min(started, key=lambda t: t.started_ms or 0).worker_id
        for task in run.tasks.values():
            self._tasks[task.id] = task
            if task.status in IN_FLIGHT and task.worker_id is not None:
                self._assigner.hold(task.worker_id, task.id, task.attempt)
        if run.status in RUN_TERMINAL:
            return  # loaded for a replay: admitted again by the replay itself
        act = gate.activation(run)
        try:
            gate.prepare_run(run, act)
        except keys.KeyError_:
            run.sem_refs = []  # it was admitted under the same input before; stay lenient
        holder = run_holder(run)
        if not run.sem_refs or gate.conc.holds(holder):
            run.admitted = True
        else:
            outcome, _ = gate.conc.arrive(
                holder, run.sem_refs, gate.order_of(run.priority, run.created_ms),
                apply_strategy=False,
            )
            gate.run_holders[run.id] = holder
            if outcome == Arrival.ADMITTED:
                gate.deferred.append(holder)
        if run.sem_refs:
            gate.run_holders[run.id] = holder
        for task in run.tasks.values():
            if not task.terminal and task.status != TaskStatus.PENDING:
                self._adopt_task(run, task, act)

    def _adopt_task(self, run: Run, task: Task, act: dict[str, object]) -> None:
        gate = self._gate
        try:
            gate.prepare_task(run, task, act)
        except keys.KeyError_:
            task.sem_refs, task.needs = [], []
        if task.status in IN_FLIGHT and task.worker_id is not None and gate.controlled(run, task):
            gate.executing.setdefault((task.id, task.attempt), (task.tenant, run.id, task.worker_id))
            gate.exec_by_run.setdefault(run.id, set()).add((task.id, task.attempt))
        if task.status == TaskStatus.QUEUED and task.queued_ms is not None:
            self._timers.set_queued(task, self._batch.now_ms, adopted=True)
        if task.status == TaskStatus.QUEUED and task.not_before_ms is None and run.admitted:
            holder = task_holder(task)
            if not task.sem_refs or gate.conc.holds(holder):
                gate.to_ready(task)
            else:
                task.stage = "sem"
                outcome, _ = gate.conc.arrive(
                    holder, task.sem_refs, gate.order_of(task.priority, task.queued_ms or 0),
                    apply_strategy=False,
                )
                if outcome == Arrival.ADMITTED:
                    gate.deferred.append(holder)

    def restore_holder(self, holder: Holder, refs: list[SemRef]) -> None:
        gate = self._gate
        gate.conc.restore(holder, refs, gate.restore_order())
        if holder.run_id is not None:
            gate.run_holders[holder.run_id] = holder

    def restore_executing(
        self, tenant: str, task_id: str, attempt: int, run_id: str, worker_id: str
    ) -> None:
        gate = self._gate
        gate.executing[(task_id, attempt)] = (tenant, run_id, worker_id)
        gate.exec_by_run.setdefault(run_id, set()).add((task_id, attempt))
        self._assigner.hold(worker_id, task_id, attempt)

    def restore_admission(self, adm: Admission) -> None:
        self._gate.limits.restore(adm)

    def release_stale_holders(self) -> None:
        """After loading: free holders nothing can release any more (leak safety net)."""
        gate = self._gate
        stale: list[Holder] = []
        for holder, entity in gate.conc.entities.items():
            if not entity.held:
                continue
            if holder.run_id is not None:
                run = self._runs.get(holder.run_id)
                if (run is None or run.status in RUN_TERMINAL) and not gate.exec_by_run.get(holder.run_id):
                    stale.append(holder)
                continue
            task_id = holder.task_id or ""
            task = self._tasks.get(task_id)
            live = (
                task is not None and task.attempt == holder.attempt
                and (task.status == TaskStatus.QUEUED or task.status in IN_FLIGHT)
            )
            if not live and (task_id, holder.attempt) not in gate.executing:
                stale.append(holder)
        for holder in stale:
            gate.deferred.extend(gate.conc.release(holder))
            if holder.run_id is not None:
                gate.run_holders.pop(holder.run_id, None)

    def adopt_timer(self, tenant: str, task_id: str, kind: str, attempt: int, due_ms: int) -> None:
        self._timers.adopt(tenant, task_id, kind, attempt, due_ms)

    # workers --------------------------------------------------------------------------
    def worker_seen(self, info: WorkerInfo) -> None:
        assigner = self._assigner
        known = assigner.workers.get(info.worker_id)
        new_session = bool(info.session) and (known is None or known.info.session != info.session)
        assigner.upsert_worker(info)
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
        worker = self._assigner.workers[info.worker_id]
        for task_id, attempt in sorted(worker.inflight - holding):
            task = self._tasks.get(task_id)
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
            self._assigner.release(info.worker_id, task_id, attempt)
            self._requeue_lost(task)
            self._gate.attempt_stopped(task_id, attempt, info.worker_id)  # never ran: free its keys

    def worker_lost(self, worker_id: str) -> None:
        held = self._assigner.remove_worker(worker_id)
        for task_id, attempt in sorted(held):
            task = self._tasks.get(task_id)
            if (
                task is not None
                and task.status in IN_FLIGHT
                and task.worker_id == worker_id
                and task.attempt == attempt
            ):
                self._requeue_lost(task)
        for task_id, attempt in sorted(held):
            self._gate.attempt_stopped(task_id, attempt, worker_id)
