"""Ready queues and worker slots: which queued task goes to which free worker.

A ready queue exists per (tenant, action, pinned worker) — the pin is set only for HARD
sticky runs, whose tasks may go to one worker alone. Each is a `FairQueue`: priority 3
first, then the fairness groups of that priority (the task's round-robin concurrency keys)
in turn, FIFO within a group, so a group that floods thousands of tasks and a group that
trickles a few take turns. Every choice is O(1) in queued tasks (O(log m) in one group's
late arrivals), with no scan; `inspected` counts the entries looked at so tests can pin
that down without timing anything.

Entries hold the task itself and its sequence number, and are removed lazily: an entry
whose task is no longer waiting here (cancelled, timed out, parked on a rate limit,
requeued under a new sequence number) is dropped when it reaches the front.

Assignment is task-driven: the best head over all queues some free worker serves is
placed on the best eligible free worker (required labels must match; preferred labels add
their weight; a SOFT sticky run prefers its worker). A queue whose head no free worker
may take sits out the round (tasks of one action share their label demands).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from libs.common.messages import WorkerInfo
from services.scheduler.engine.fairqueue import FairQueue
from services.scheduler.model import Run, Task, TaskStatus

QueueKey = tuple[str, str, str]  # (tenant, action, pinned worker id or "")
Order = tuple[int, int]  # (-priority, queue sequence)

# score(task, worker) -> None when the worker may not take the task, else higher = better
Scorer = Callable[[Task, "Worker"], int | None]
# admit(task, worker) -> False when the task must wait (rate limit); the engine parked it
Admitter = Callable[[Task, "Worker"], bool]


@dataclass(slots=True, eq=False)
class Worker:
    info: WorkerInfo
    # (task id, attempt) pairs assigned and not yet settled by the worker
    inflight: set[tuple[str, int]] = field(default_factory=set)
    # Its dispatcher could not deliver to this registration (session, registered_ms): no
    # assignments until the worker registers again, or is declared lost.
    unreachable: tuple[str, int] | None = None

    @property
    def free(self) -> int:
        if self.unreachable == (self.info.session, self.info.registered_ms):
            return 0
        return self.info.slots - len(self.inflight)


class Assigner:
    def __init__(self) -> None:
        self._queues: dict[QueueKey, FairQueue[Task]] = {}
        self._seq = itertools.count(1)
        self.workers: dict[str, Worker] = {}
        # Inflight counts for workers we have not (yet) seen in the registry, e.g. right
        # after a scheduler restart; they are merged when the worker shows up.
        self._orphan_inflight: dict[str, set[tuple[str, int]]] = {}
        self._rr = 0
        self.inspected = 0  # queue entries looked at, for the algorithmic-cost tests

    # queues -------------------------------------------------------------------------
    def enqueue(self, task: Task, *, pinned: str = "", keep_seq: bool = False) -> None:
        """Make a QUEUED task assignable; `keep_seq` keeps its place in line (unparked)."""
        if not keep_seq or task.queue_seq == 0:
            task.queue_seq = next(self._seq)
        queue = self._queues.get((task.tenant, task.action, pinned))
        if queue is None:
            queue = self._queues[(task.tenant, task.action, pinned)] = FairQueue()
        queue.push(task.priority, task.group, task.queue_seq, task)

    def _head(self, key: QueueKey) -> Task | None:
        """The task whose turn it is in queue `key`; stale entries met on the way go."""
        queue = self._queues.get(key)
        if queue is None:
            return None
        while (top := queue.peek()) is not None:
            seq, task = top
            self.inspected += 1
            if task.queue_seq == seq and task.status == TaskStatus.QUEUED and task.stage == "ready":
                return task
            queue.drop()
        del self._queues[key]
        return None

    # workers ------------------------------------------------------------------------
    def upsert_worker(self, info: WorkerInfo) -> None:
        worker = self.workers.get(info.worker_id)
        if worker is None:
            worker = Worker(info, self._orphan_inflight.pop(info.worker_id, set()))
            self.workers[info.worker_id] = worker
        else:
            worker.info = info

    def remove_worker(self, worker_id: str) -> set[tuple[str, int]]:
        """Forget a worker; returns the task ids it still held."""
        worker = self.workers.pop(worker_id, None)
        held = self._orphan_inflight.pop(worker_id, set())
        if worker is not None:
            held |= worker.inflight
        return held

    def hold(self, worker_id: str, task_id: str, attempt: int) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.inflight.add((task_id, attempt))
        else:
            self._orphan_inflight.setdefault(worker_id, set()).add((task_id, attempt))

    def release(self, worker_id: str | None, task_id: str, attempt: int) -> None:
        """The worker has settled this attempt (any outcome): its slot is free again."""
        if not worker_id:
            return
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.inflight.discard((task_id, attempt))
        else:
            orphan = self._orphan_inflight.get(worker_id)
            if orphan is not None:
                orphan.discard((task_id, attempt))
                if not orphan:
                    del self._orphan_inflight[worker_id]

    def orphaned_workers(self) -> list[str]:
        return [w for w, held in self._orphan_inflight.items() if held]

    def mark_unreachable(self, task: Task) -> None:
        """The dispatcher could not deliver `task` to its worker (it is not connected there,
        e.g. right after a dispatcher restart, before the worker reconnects). Assigning to it
        again would bounce the same way every batch, so it gets nothing until it registers
        anew. A report about an earlier registration says nothing about the current one."""
        worker = self.workers.get(task.worker_id or "")
        if worker is None or task.assigned_ms is None:
            return
        if worker.info.registered_ms <= task.assigned_ms:
            worker.unreachable = (worker.info.session, worker.info.registered_ms)

    # assignment ---------------------------------------------------------------------
    def assign(
        self,
        limit: int = 1000,
        score: Scorer | None = None,
        admit: Admitter | None = None,
    ) -> list[tuple[Task, Worker]]:
        """Fill free slots: best head first (priority, then age), best worker for it."""
        out: list[tuple[Task, Worker]] = []
        free = [w for w in self.workers.values() if w.free > 0]
        if not free or not self._queues:
            return out
        self._rr = (self._rr + 1) % len(free)
        free = free[self._rr :] + free[: self._rr]  # ties go to workers in turn
        serving: dict[tuple[str, str], list[Worker]] = {}
        for worker in free:
            for action in worker.info.actions:
                serving.setdefault((worker.info.tenant, action), []).append(worker)
        heads: list[tuple[Order, QueueKey]] = []
        for (tenant, action), workers in serving.items():
            for key in [(tenant, action, "")] + [(tenant, action, w.info.worker_id) for w in workers]:
                task = self._head(key) if key in self._queues else None
                if task is not None:
                    heads.append(((-task.priority, task.queue_seq), key))
        heapq.heapify(heads)
        while heads and len(out) < limit:
            order, key = heapq.heappop(heads)
            task = self._head(key)
            if task is None:
                continue
            if (-task.priority, task.queue_seq) != order:
                heapq.heappush(heads, ((-task.priority, task.queue_seq), key))
                continue
            chosen = self._pick(task, key, serving[(key[0], key[1])], score)
            if chosen is None:
                continue  # nobody free may take this queue's head: it sits out the round
            self._queues[key].pop()
            if admit is None or admit(task, chosen):
                chosen.inflight.add((task.id, task.attempt))
                out.append((task, chosen))
            # else the engine parked it (rate limit); the next head of this queue goes on
            nxt = self._head(key)
            if nxt is not None:
                heapq.heappush(heads, ((-nxt.priority, nxt.queue_seq), key))
        return out

    @staticmethod
    def _pick(task: Task, key: QueueKey, workers: list[Worker], score: Scorer | None) -> Worker | None:
        best: Worker | None = None
        best_rank: tuple[int, int] | None = None
        for worker in workers:
            if worker.free <= 0 or (key[2] and worker.info.worker_id != key[2]):
                continue
            s = 0 if score is None else score(task, worker)
            if s is None:
                continue
            rank = (s, worker.free)
            if best_rank is None or rank > best_rank:
                best, best_rank = worker, rank
        return best


def preference(run: Run, task: Task, worker: Worker) -> int | None:
    """None: this worker may not take the task; else how much it suits it (higher first).

    Required labels must match; preferred ones add their weight; a sticky run's own worker
    comes first (SOFT) or is the only one allowed (HARD).
    """
    score = 0
    have = worker.info.labels
    for label, want in task.spec.desired_labels.items():
        if have.get(label) == want.value:
            score += want.weight
        elif want.required:
            return None
    if run.spec.sticky and run.sticky_worker is not None:
        if run.sticky_worker == worker.info.worker_id:
            score += 1_000_000
        elif run.spec.sticky == "HARD":
            return None
    return score
