"""Durable tasks: the log of their waits, their timers, and the slots they hold while waiting.

A durable task's code calls waits (`aio_sleep_for`, `aio_wait_for_event`, `aio_wait_any`) and
memoized reads (`aio_now`); each call has a position (its index among the task's calls). The
worker reports each one (a "wait" report carrying a `DurableStep`), and this module keeps the
task's log: position → kind, spec, status, result, deadline (a `records.Entry`). PostgreSQL
has the durable copy (`durable_log`, migration 040); the matcher reads the event conditions
of pending waits (`durable_event_waits`) and answers with `WaitSatisfied` commands.

Slots: a task that reaches a pending wait is *parked*: its regular slot is given back and it
counts against the worker's `durable_slots` instead (while those are all taken it simply
keeps its regular slot). When the wait completes, a wake-up is queued for that worker and sent
once a regular slot is free there (a woken task runs code again, so it needs one). If the
worker is gone, the attempt is requeued like any lost attempt and the next one, on any worker,
replays the log: completed waits return at once, a pending one keeps its original deadline.

A wait's spec is canonical JSON `{"conds": [...]}`, each condition `{"sleep_ms": n}`,
`{"until_ms": t}`, `{"event": key, "expression": e, "scope": s}`, `{"run": run id}` (the
run has ended: a durable task awaiting a child's result), `{"signal": name}` or
`{"waitpoint": id}` (a message sent to the run, `_inbox.py`), a timeout being a sleep with
`"timeout": true`. A `state` entry records `ctx.set_state` (done at once, like `now`). Its result is `{"index": i, "payload": p}`: which condition fired.
Positions below zero belong to a DAG task's `wait_for` conditions (`_conditions.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from libs.common.cel import check_expression
from libs.common.messages import (
    MAX_STATE_BYTES,
    DurableStep,
    TaskReport,
    WaitSatisfied,
    WakeTask,
    WorkerInfo,
)
from services.scheduler.effects import DurableWrites
from services.scheduler.engine import _outbox
from services.scheduler.engine._batch import Batch
from services.scheduler.engine._timers import Timers
from services.scheduler.engine.assign import Assigner
from services.scheduler.model import IN_FLIGHT, Run, Task, TaskStatus
from services.scheduler.records import DONE, PENDING, TIMER_DURABLE, Entry

Wake = tuple[str, int, int, bytes]  # task id, attempt, position, result
MAX_CONDITIONS = 100  # per wait: a wait_any over more is a mistake, not a workload
CONDITION_KINDS = frozenset({"sleep_ms", "until_ms", "event", "run", "signal", "waitpoint"})
# Log entries done when recorded: a read of the clock, a run state, a waitpoint made.
MEMOS = ("now", "state", "waitpoint")


class BadWait(ValueError):
    """A wait spec the scheduler cannot honour; the task is told why."""


def parse_conds(spec: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(spec)
        conds = doc["conds"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadWait(f"unreadable wait spec: {exc}") from exc
    if not isinstance(conds, list) or not 1 <= len(conds) <= MAX_CONDITIONS:
        raise BadWait(f"a wait takes 1 to {MAX_CONDITIONS} conditions")
    for c in conds:
        if not isinstance(c, dict) or not (CONDITION_KINDS & c.keys()):
            raise BadWait(f"unknown wait condition {c!r}")
        if c.get("expression") and (problem := check_expression(str(c["expression"]))):
            raise BadWait(f"expression {c['expression']!r}: {problem}")
    return conds


def cond_deadline(cond: dict[str, Any], registered_ms: int) -> int | None:
    if "sleep_ms" in cond:
        return registered_ms + int(cond["sleep_ms"])
    if "until_ms" in cond:
        return int(cond["until_ms"])
    return None


def fired(index: int, payload: bytes = b"null") -> bytes:
    return b'{"index":%d,"payload":%s}' % (index, payload)


def error_result(kind: str, message: str) -> bytes:
    return json.dumps({"error": kind, "message": message}).encode()


class Durable:
    """The durable logs of the engine's tasks, their parked attempts and owed wake-ups."""

    def __init__(
        self,
        batch: Batch,
        runs: dict[str, Run],
        tasks: dict[str, Task],
        timers: Timers,
        assigner: Assigner,
        *,
        requeue_lost: Callable[[Task], None],
        attempt_stopped: Callable[[str, int, str | None], None],
        condition_met: Callable[[Task], None],
        take_message: Callable[[Task, Entry], tuple[int, bytes] | None] = lambda t, e: None,
    ) -> None:
        self._batch = batch
        self._runs = runs
        self._tasks = tasks
        self._timers = timers
        self._assigner = assigner
        # What a wait's outcome asks of the state machine and the admission gate.
        self._requeue_lost = requeue_lost  # a parked attempt's worker is gone
        self._attempt_stopped = attempt_stopped  # ... and its concurrency slots go with it
        self._condition_met = condition_met  # a DAG wait_for condition held (_conditions.py)
        self._take_message = take_message  # a message the run was sent earlier (_inbox.py)
        self.logs: dict[str, dict[int, Entry]] = {}
        # worker id -> attempts parked there (task id, attempt), holding no regular slot
        self.parked: dict[str, set[tuple[str, int]]] = {}
        # worker id -> wake-ups not sent yet, in the order their waits completed
        self.wakes: dict[str, list[Wake]] = {}
        # Parked attempts read back after a restart, before their worker shows up: they keep
        # their (orphan) regular slot until then, so a worker that never returns is declared
        # lost with them and they are requeued.
        self.restored: dict[str, set[tuple[str, int]]] = {}
        # run id -> waits with a {"run": id} condition on it: (task id, position, index)
        self.run_waiters: dict[str, set[tuple[str, int, int]]] = {}
        # (tenant, run id) of waited-on runs not in memory: ended already, or not created yet
        # (a child trigger in flight). The service looks them up before the next batch.
        self.run_lookups: set[tuple[str, str]] = set()
        self.writes = DurableWrites()
        # runs whose state a task set (or that made a waitpoint) in this batch: their live
        # pages re-read them
        self.states_changed: set[tuple[str, str, str]] = set()  # tenant, run, task

    # the log --------------------------------------------------------------------------
    def log_for(self, task: Task) -> list[DurableStep]:
        log = self.logs.get(task.id)
        if not log:
            return []
        return [e.step() for pos, e in sorted(log.items()) if pos >= 0]

    def entry(self, task_id: str, position: int) -> Entry | None:
        return self.logs.get(task_id, {}).get(position)

    def record(self, task: Task, position: int, kind: str, spec: bytes,
               conds: list[dict[str, Any]]) -> Entry:
        """A new pending wait (or DAG condition): store it, arm its timer, publish its
        event conditions to the matcher."""
        now = self._batch.now_ms
        deadlines = [d for c in conds if (d := cond_deadline(c, now)) is not None]
        e = Entry(task.tenant, task.id, task.run_id, position, kind, spec, PENDING, None, now,
                  min(deadlines) if deadlines else None, None, conds)
        self.logs.setdefault(task.id, {})[position] = e
        self._touch(e)
        self._arm(e)
        self._watch_runs(e)
        for i, c in enumerate(conds):
            if "event" in c:
                self.writes.event_put.append((
                    e.tenant, e.task_id, position, i, str(c["event"]), c.get("scope"),
                    str(c.get("expression") or ""), now,
                ))
        return e

    def _watch_runs(self, e: Entry) -> None:
        for i, c in enumerate(e.conds):
            if "run" not in c:
                continue
            run_id = str(c["run"])
            self.run_waiters.setdefault(run_id, set()).add((e.task_id, e.position, i))
            if run_id not in self._runs:
                self.run_lookups.add((e.tenant, run_id))

    def run_ended(self, run_id: str, status: str) -> None:
        """A waited-on run ended (in this batch, or found ended by a lookup)."""
        for task_id, position, index in sorted(self.run_waiters.pop(run_id, ())):
            task = self._tasks.get(task_id)
            e = self.entry(task_id, position)
            if task is not None and e is not None and e.status == PENDING:
                self.complete(task, e, fired(index, json.dumps({"status": status}).encode()))

    def take_run_lookups(self) -> list[tuple[str, str]]:
        out = sorted(self.run_lookups)
        self.run_lookups.clear()
        return out

    def _arm(self, e: Entry) -> None:
        if e.deadline_ms is not None:
            self._timers.set_memory(e.tenant, e.task_id, TIMER_DURABLE, e.position, e.deadline_ms)

    def _touch(self, e: Entry) -> None:
        self.writes.entries[(e.tenant, e.task_id, e.position)] = e

    def take_states_changed(self) -> set[tuple[str, str, str]]:
        out, self.states_changed = self.states_changed, set()
        return out

    def take_writes(self) -> DurableWrites:
        out, self.writes = self.writes, DurableWrites()
        return out

    # reports from workers ---------------------------------------------------------------
    def on_wait(self, task: Task, rep: TaskReport) -> None:
        """The attempt reached a wait (or memoized a value) at `rep.step.position`."""
        step = rep.step
        if step is None or task.status not in IN_FLIGHT or not task.spec.durable:
            return
        e = self.entry(task.id, step.position)
        if e is not None and (e.kind != step.kind or e.spec != step.spec):
            msg = (f"position {step.position}: the log has {e.kind} {e.spec.decode()}, this "
                   f"replay asked for {step.kind} {step.spec.decode()}")
            self._deliver(task, step.position, error_result("NonDeterminism", msg))
            return
        if step.kind in MEMOS:
            if e is None:
                e = Entry(task.tenant, task.id, task.run_id, step.position, step.kind, step.spec,
                          DONE, step.result or b"null", self._batch.now_ms)
                self.logs.setdefault(task.id, {})[step.position] = e
                self._touch(e)
                if step.kind == "state" and len(step.spec) <= MAX_STATE_BYTES:
                    self.writes.states[(task.tenant, task.run_id)] = e
                if step.kind in ("state", "waitpoint"):  # what the run's page shows changed
                    self.states_changed.add((task.tenant, task.run_id, task.id))
            return
        if e is None:
            try:
                conds = parse_conds(step.spec)
            except BadWait as exc:
                self._deliver(task, step.position, error_result("BadWait", str(exc)))
                return
            e = self.record(task, step.position, "wait", step.spec, conds)
            if (taken := self._take_message(task, e)) is not None:
                self.complete(task, e, fired(*taken))
        if e.status == DONE:
            self._deliver(task, e.position, e.result or b"null")  # it still holds its slot
            return
        e.waiting_attempt = task.attempt
        self._touch(e)
        self._park(task)

    def pending_waits(self, task: Task) -> list[Entry]:
        """The task's pending waits (positions of its code, not DAG conditions)."""
        return [e for pos, e in sorted(self.logs.get(task.id, {}).items())
                if pos >= 0 and e.status == PENDING]

    def deliver_message(self, task: Task, e: Entry, index: int, payload: bytes) -> None:
        """A signal or waitpoint completion sent to the run satisfies condition `index`."""
        if e.status == PENDING:
            self.complete(task, e, fired(index, payload))

    def _park(self, task: Task) -> None:
        worker_id = task.worker_id or ""
        worker = self._assigner.workers.get(worker_id)
        parked = self.parked.setdefault(worker_id, set())
        capacity = worker.info.durable_slots if worker is not None else 0
        if (task.id, task.attempt) in parked:
            return
        if len(parked) >= capacity:
            self._purge(worker_id)
            if len(parked) >= capacity:
                return  # no durable slot free: it keeps its regular one while it waits
        parked.add((task.id, task.attempt))
        self._assigner.release(worker_id, task.id, task.attempt)

    def _purge(self, worker_id: str) -> None:
        """Forget parked attempts that ended or moved on (timed out, cancelled)."""
        parked = self.parked.get(worker_id, set())
        for task_id, attempt in list(parked):
            task = self._tasks.get(task_id)
            if task is None or task.attempt != attempt or task.status not in IN_FLIGHT:
                parked.discard((task_id, attempt))

    # completion -------------------------------------------------------------------------
    def fire(self, task: Task, position: int) -> None:
        """The timer of the wait at `position` came due: the earliest sleep fires."""
        e = self.entry(task.id, position)
        if e is None or e.status != PENDING or e.deadline_ms is None:
            return
        if e.deadline_ms > self._batch.now_ms:
            self._arm(e)  # re-armed later (a restart re-reads it): not due yet
            return
        index = min(
            (i for i, c in enumerate(e.conds) if cond_deadline(c, e.registered_ms) is not None),
            key=lambda i: cond_deadline(e.conds[i], e.registered_ms) or 0,
        )
        self.complete(task, e, fired(index))

    def satisfied(self, tenant: str, msg: WaitSatisfied) -> None:
        task = self._tasks.get(msg.task_id)
        if task is None or task.tenant != tenant or task.terminal:
            return
        e = self.entry(task.id, msg.position)
        if e is None or e.status != PENDING or not 0 <= msg.index < len(e.conds):
            return
        self.complete(task, e, fired(msg.index, msg.payload or b"null"))

    def complete(self, task: Task, e: Entry, result: bytes) -> None:
        e.status = DONE
        e.result = result
        self._touch(e)
        if any("event" in c for c in e.conds):
            self.writes.event_del.add((e.tenant, e.task_id, e.position))
        if e.position < 0:
            self._condition_met(task)
            return
        if (task.status == TaskStatus.RUNNING and e.waiting_attempt == task.attempt
                and task.worker_id):
            self._deliver(task, e.position, result)
        # else no attempt waits here: the next one replays the result

    def _deliver(self, task: Task, position: int, result: bytes) -> None:
        """Resume the attempt now if it holds a slot on a known worker, else queue it: a
        parked attempt first needs a free slot, and an unknown worker (right after a
        restart) first needs to show up in the registry."""
        worker_id = task.worker_id or ""
        key = (task.id, task.attempt)
        # Parked on several waits at once (gathering children): until the last one ends
        # the task's code cannot go on, so it is told without taking a slot.
        still_waiting = any(
            other.position != position and other.position >= 0 and other.status == PENDING
            and other.waiting_attempt == task.attempt
            for other in self.logs.get(task.id, {}).values()
        )
        if (worker_id in self._assigner.workers and key not in self.restored.get(worker_id, ())
                and (still_waiting or key not in self.parked.get(worker_id, ()))):
            self._send_wake(task, position, result)
        else:
            self.wakes.setdefault(worker_id, []).append((task.id, task.attempt, position, result))

    def send_wakes(self) -> None:
        """Send queued wake-ups: parked attempts as regular slots free up on their workers."""
        for worker_id, queue in list(self.wakes.items()):
            worker = self._assigner.workers.get(worker_id)
            if worker is None:
                continue  # not seen since a restart yet, or lost (worker_lost drops the queue)
            parked = self.parked.get(worker_id, set())
            restored = self.restored.get(worker_id, set())
            keep: list[Wake] = []
            for item in queue:
                task_id, attempt, position, result = item
                key = (task_id, attempt)
                task = self._tasks.get(task_id)
                if task is None or task.attempt != attempt or task.status != TaskStatus.RUNNING:
                    parked.discard(key)
                    continue
                if key in restored:
                    keep.append(item)
                    continue
                if key in parked:
                    if worker.free <= 0:
                        keep.append(item)
                        continue
                    parked.discard(key)
                    self._assigner.hold(worker_id, task_id, attempt)
                self._send_wake(task, position, result)
            if keep:
                self.wakes[worker_id] = keep
            else:
                del self.wakes[worker_id]

    def _send_wake(self, task: Task, position: int, result: bytes) -> None:
        worker = self._assigner.workers.get(task.worker_id or "")
        if worker is None:  # only reached through _deliver / send_wakes, which check
            return
        wake = WakeTask(tenant=task.tenant, worker_id=task.worker_id or "", task_id=task.id,
                        attempt=task.attempt, position=position, result=result)
        _outbox.send_wake(self._batch.fx, wake, worker.info.dispatcher_id, self._batch.now_ms)
        e = self.entry(task.id, position)
        if e is not None and e.waiting_attempt == task.attempt:
            e.waiting_attempt = None  # delivered: a restart must not wake it again
            self._touch(e)

    # workers ----------------------------------------------------------------------------
    def worker_lost(self, worker_id: str) -> None:
        """Its parked attempts hold no slot, so recovery did not see them: requeue them."""
        self.wakes.pop(worker_id, None)
        self.restored.pop(worker_id, None)  # still in its held slots: recovery requeued them
        for task_id, attempt in sorted(self.parked.pop(worker_id, set())):
            task = self._tasks.get(task_id)
            if (task is not None and task.status in IN_FLIGHT and task.attempt == attempt
                    and task.worker_id == worker_id):
                self._requeue_lost(task)
            self._attempt_stopped(task_id, attempt, worker_id)

    def worker_seen(self, info: WorkerInfo, new_session: bool) -> None:
        """A worker registered anew: parked attempts it no longer holds were lost with it."""
        for task_id, attempt in sorted(self.restored.pop(info.worker_id, set())):
            task = self._tasks.get(task_id)
            if task is not None and task.attempt == attempt and task.status == TaskStatus.RUNNING:
                self._assigner.release(info.worker_id, task_id, attempt)
                self.parked.setdefault(info.worker_id, set()).add((task_id, attempt))
        if not new_session:
            return
        holding = {(t, a) for t, a in info.holding}
        parked = self.parked.get(info.worker_id, set())
        lost: list[tuple[str, int]] = []
        for key in sorted(parked - holding):
            task = self._tasks.get(key[0])
            if task is not None and task.attempt == key[1] and task.status in IN_FLIGHT:
                # Started after this registration: its `holding` could not list it.
                if task.started_ms is None or task.started_ms >= info.registered_ms:
                    continue
                self._requeue_lost(task)
            lost.append(key)
            parked.discard(key)
            self._attempt_stopped(key[0], key[1], info.worker_id)
        queue = self.wakes.get(info.worker_id)
        if queue:
            queue[:] = [w for w in queue if (w[0], w[1]) not in lost]

    def attempt_settled(self, worker_id: str, task_id: str, attempt: int) -> None:
        self.parked.get(worker_id, set()).discard((task_id, attempt))

    def reset(self, task: Task) -> None:
        """Drop the task's log (a run replayed): its next attempt starts afresh."""
        self.logs.pop(task.id, None)
        w = self.writes
        for key in [k for k in w.entries if k[1] == task.id]:
            del w.entries[key]
        w.event_put = [row for row in w.event_put if row[1] != task.id]
        w.reset.add((task.tenant, task.id))

    def seed(self, task: Task, steps: list[DurableStep]) -> None:
        """A forked task's log kept from the run it was forked from: done entries only."""
        for step in steps:
            if not step.done:
                continue
            e = Entry(task.tenant, task.id, task.run_id, step.position, step.kind, step.spec,
                      DONE, step.result or b"null", self._batch.now_ms)
            self.logs.setdefault(task.id, {})[step.position] = e
            self._touch(e)
            if step.kind == "state":
                self.writes.states[(task.tenant, task.run_id)] = e

    def forget(self, tasks: list[Task]) -> None:
        """The run finished: drop its logs from memory (PostgreSQL keeps them)."""
        for task in tasks:
            log = self.logs.pop(task.id, None)
            if log is None:
                continue
            for e in log.values():
                if e.status == PENDING and any("event" in c for c in e.conds):
                    self.writes.event_del.add((e.tenant, e.task_id, e.position))

    # after a restart ----------------------------------------------------------------------
    def restore(self, e: Entry) -> None:
        """An entry read back from PostgreSQL (tasks and workers' slots are loaded first)."""
        if e.kind not in MEMOS:
            try:
                e.conds = parse_conds(e.spec)
            except BadWait:
                e.conds = []
        self.logs.setdefault(e.task_id, {})[e.position] = e
        task = self._tasks.get(e.task_id)
        if task is None:
            return
        if e.status == PENDING:
            self._arm(e)
            self._watch_runs(e)
        parked_here = (
            e.position >= 0 and e.waiting_attempt == task.attempt
            and task.status == TaskStatus.RUNNING and task.worker_id is not None
        )
        if parked_here and task.worker_id is not None:
            self.restored.setdefault(task.worker_id, set()).add((task.id, task.attempt))
            if e.status == DONE and e.result is not None:
                self.wakes.setdefault(task.worker_id, []).append(
                    (task.id, task.attempt, e.position, e.result))
