"""The engine's timers: one heap in memory, a few of them also kept in PostgreSQL.

Kinds (named in records.py): an execution timeout (TIMER_EXEC) is stored, because the
assignment time it follows from is not; a queued task's schedule timeout (TIMER_SCHED) and
its retry time (TIMER_RETRY) follow from the task row (queued_at, not_before) and its spec, so they live in memory only
and are set again when a run is adopted after a restart. Only timers with a stored row are
deleted from PostgreSQL, which spares the flush three index probes for every settled task.

Entries are never removed from the heap (that would be a scan): a timer whose task finished
or moved on to another attempt is skipped when it comes due, and the heap is compacted when
it has doubled since the last compaction. What a timer does when it fires is the state
machine's business (`StateMachine.fire_timers`).

Fairness: a batch fires a bounded number of timers, taken round-robin across tenants. Due
timers leave the heap into one queue per tenant, and each batch takes one from each tenant
in turn, so 50,000 schedule timeouts of one tenant coming due together neither make one
huge batch (every other tenant's assignments wait for its commit) nor hold back another
tenant's timers that came due a millisecond later.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from services.scheduler.effects import Effects
from services.scheduler.model import Task
from services.scheduler.records import TIMER_DURABLE, TIMER_RETRY, TIMER_SCHED, TimerKey

TIMER_COMPACT_MIN = 4096  # heap entries before the first compaction
# Timers fired per batch at most: a storm of them is spread over batches this size, and
# another tenant's trigger or report waits for at most one of them (with the service's
# TimerTurn, its own batch then fires none). make bench-aged over 1M runs, 50,000 schedule
# timeouts in one tenant, other tenant's trigger->start p99: 500 per batch 285 ms; 100 58-77 ms,
# 46-51 ms with TimerTurn; 50 with TimerTurn 19-29 ms, the storm over in 8-10 s instead of 7-8.
TIMER_BATCH = 50

Timer = tuple[int, str, str, str, int]  # due ms, tenant, task id, kind, attempt


class Timers:
    def __init__(self) -> None:
        self._heap: list[Timer] = []
        # Timers that have a row in PostgreSQL (or one being written).
        self._stored: set[TimerKey] = set()
        self._compact_at = TIMER_COMPACT_MIN
        # Due timers not fired yet, per tenant in due order; the dict's order is the turn order.
        self._due: dict[str, deque[Timer]] = {}
        self._due_count = 0

    def __len__(self) -> int:
        return len(self._heap) + self._due_count

    def next_due_ms(self) -> int | None:
        if self._due_count:
            return min(q[0][0] for q in self._due.values())
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int) -> Iterator[Timer]:
        """Due timers, one tenant after another (each tenant's in due order), for as long as
        the caller iterates; each is forgotten as it is handed out."""
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            timer = heapq.heappop(heap)
            self._due.setdefault(timer[1], deque()).append(timer)
            self._due_count += 1
        while self._due:
            for tenant in list(self._due):
                queue = self._due.pop(tenant)
                timer = queue.popleft()
                if queue:
                    self._due[tenant] = queue  # to the back of the turn order
                self._due_count -= 1
                yield timer

    def adopt(self, tenant: str, task_id: str, kind: str, attempt: int, due_ms: int) -> None:
        """A timer read back from PostgreSQL after a restart."""
        heapq.heappush(self._heap, (due_ms, tenant, task_id, kind, attempt))
        self._stored.add((tenant, task_id, kind))

    def set_stored(self, fx: Effects, task: Task, kind: str, due_ms: int) -> None:
        """A timer kept in PostgreSQL too (execution timeouts)."""
        key: TimerKey = (task.tenant, task.id, kind)
        fx.put_timer(key, task.attempt, due_ms)
        self._stored.add(key)
        heapq.heappush(self._heap, (due_ms, task.tenant, task.id, kind, task.attempt))

    def set_memory(self, tenant: str, task_id: str, kind: str, key: int, due_ms: int) -> None:
        """A timer with no row of its own (its owner keeps the durable copy)."""
        heapq.heappush(self._heap, (due_ms, tenant, task_id, kind, key))

    def set_queued(self, task: Task, now_ms: int, *, adopted: bool = False) -> None:
        """A queued task's schedule timeout and, after a failure, its retry time (memory only)."""
        assert task.queued_ms is not None
        not_before = task.not_before_ms
        limit_ms = int(task.spec.schedule_timeout_s * 1000)
        due = (not_before if not_before else task.queued_ms) + limit_ms
        heapq.heappush(self._heap, (due, task.tenant, task.id, TIMER_SCHED, task.attempt))
        # A queued task waiting for its retry time is enqueued when this fires (at once if due).
        if not_before is not None and (adopted or not_before > now_ms):
            heapq.heappush(self._heap, (not_before, task.tenant, task.id, TIMER_RETRY, task.attempt))

    def drop(self, fx: Effects, key: TimerKey) -> None:
        """Delete the timer's stored row, if it has one (the heap entry is skipped later)."""
        if key in self._stored:
            self._stored.discard(key)
            fx.del_timer(key)

    def compact_if_due(self, tasks: dict[str, Task]) -> None:
        """Drop entries whose task finished or moved on, once the heap has doubled: amortized
        O(1) per timer, and memory stays proportional to the live tasks."""
        if len(self._heap) <= self._compact_at:
            return
        keep = [
            entry for entry in self._heap
            if (task := tasks.get(entry[2])) is not None
            and (task.attempt == entry[4] or entry[3] == TIMER_DURABLE)
        ]
        heapq.heapify(keep)
        self._heap = keep
        self._compact_at = max(TIMER_COMPACT_MIN, 2 * len(keep))
