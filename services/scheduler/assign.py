"""Ready queues and worker slots: which queued task goes to which free worker.

Queues are heaps per (tenant, action) ordered by priority (high first) then FIFO, so picking
the next task is O(log n). Entries are removed lazily: a popped entry whose task is no longer
QUEUED (cancelled, timed out, requeued under a new sequence) is skipped.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from libs.common.messages import WorkerInfo
from services.scheduler.model import Task, TaskStatus

QueueKey = tuple[str, str]  # (tenant, action)


@dataclass(slots=True, eq=False)
class Worker:
    info: WorkerInfo
    # (task id, attempt) pairs assigned and not yet settled by the worker
    inflight: set[tuple[str, int]] = field(default_factory=set)

    @property
    def free(self) -> int:
        return self.info.slots - len(self.inflight)


class Assigner:
    def __init__(self) -> None:
        self._queues: dict[QueueKey, list[tuple[int, int, str]]] = {}
        self._seq = itertools.count(1)
        self.workers: dict[str, Worker] = {}
        # Inflight counts for workers we have not (yet) seen in the registry, e.g. right
        # after a scheduler restart; they are merged when the worker shows up.
        self._orphan_inflight: dict[str, set[tuple[str, int]]] = {}
        self._rr = 0

    # queues -------------------------------------------------------------------------
    def enqueue(self, task: Task) -> None:
        task.queue_seq = next(self._seq)
        heapq.heappush(
            self._queues.setdefault((task.tenant, task.action), []),
            (-task.priority, task.queue_seq, task.id),
        )

    def queued_count(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _head(self, key: QueueKey, tasks: dict[str, Task]) -> Task | None:
        queue = self._queues.get(key)
        while queue:
            _, seq, task_id = queue[0]
            task = tasks.get(task_id)
            if task is not None and task.status == TaskStatus.QUEUED and task.queue_seq == seq:
                return task
            heapq.heappop(queue)
        if queue is not None and not queue:
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

    def orphaned_workers(self) -> list[str]:
        return [w for w, held in self._orphan_inflight.items() if held]

    # assignment ---------------------------------------------------------------------
    def assign(self, tasks: dict[str, Task], limit: int = 1000) -> list[tuple[Task, Worker]]:
        """Fill free slots, highest priority first; workers take turns one slot at a time."""
        out: list[tuple[Task, Worker]] = []
        workers = [w for w in self.workers.values() if w.free > 0]
        if not workers or not self._queues:
            return out
        self._rr = (self._rr + 1) % len(workers)
        workers = workers[self._rr :] + workers[: self._rr]
        while workers and len(out) < limit:
            still: list[Worker] = []
            for worker in workers:
                task = self._best_for(worker, tasks)
                if task is None:
                    continue
                heapq.heappop(self._queues[(task.tenant, task.action)])
                worker.inflight.add((task.id, task.attempt))
                out.append((task, worker))
                if worker.free > 0:
                    still.append(worker)
            workers = still
        return out

    def _best_for(self, worker: Worker, tasks: dict[str, Task]) -> Task | None:
        best: Task | None = None
        tenant = worker.info.tenant
        for action in worker.info.actions:
            task = self._head((tenant, action), tasks)
            if task is not None and (
                best is None or (-task.priority, task.queue_seq) < (-best.priority, best.queue_seq)
            ):
                best = task
        return best
