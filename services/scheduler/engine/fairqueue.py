"""Turn-taking queue shared by the ready queues and the rate-limit waiting lines.

Entries are split by priority (higher first) and, within a priority, by fairness group.
The groups of a priority form a ring: the group at the front gives its oldest entry (lowest
sequence number) and moves to the back, so a group that floods thousands of entries and a
group that trickles a few take turns. Each group is a small heap keyed by sequence number
— normally entries arrive in order, but one that comes back (unparked, requeued with its
old number) slots in where it stood.

Every operation is O(1) or O(log m), m the size of one group, and nothing scans: there
are at most a handful of priorities, and the ring and the group map are touched only at
their ends or by key. The queue never looks inside the items; callers that remove entries
lazily (a task cancelled while it waits) check the head with `peek` and `drop` it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class _Group(Generic[T]):
    """One group's entries in sequence order: a FIFO, plus a heap for late arrivals.

    Entries nearly always arrive in order, and a deque takes them with no comparisons at
    all (a heap of 100k tuples spends its time comparing cold tuples, cache miss after
    cache miss). One that arrives behind the FIFO's tail — a task coming back with its
    old number — goes to `late`; the head is the lower of the two fronts.
    """

    fifo: deque[tuple[int, T]] = field(default_factory=deque)
    late: list[tuple[int, T]] = field(default_factory=list)

    def push(self, seq: int, item: T) -> None:
        fifo = self.fifo
        if not fifo or fifo[-1][0] < seq:
            fifo.append((seq, item))
        else:
            heapq.heappush(self.late, (seq, item))


@dataclass(slots=True, eq=False)
class _Level(Generic[T]):
    priority: int
    # group -> its entries; a group is in `ring` iff it has entries
    groups: dict[str, _Group[T]] = field(default_factory=dict)
    ring: deque[str] = field(default_factory=deque)


_SPARE_GROUPS = 256  # emptied groups kept for reuse: groups come and go constantly


class FairQueue(Generic[T]):
    """Priority first, then groups in turn, then FIFO by sequence number within a group.

    Sequence numbers must be unique within a queue: they order a group, and two equal ones
    would make its heap compare the items.
    """

    __slots__ = ("_by_priority", "_levels", "_spare", "size")

    def __init__(self) -> None:
        self._levels: list[_Level[T]] = []  # highest priority first
        self._by_priority: dict[int, _Level[T]] = {}
        self._spare: list[_Group[T]] = []
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def push(self, priority: int, group: str, seq: int, item: T) -> None:
        level = self._by_priority.get(priority)
        if level is None:
            level = self._by_priority[priority] = _Level(priority)
            self._levels.append(level)
            self._levels.sort(key=lambda lv: -lv.priority)
        entries = level.groups.get(group)
        if entries is None:
            entries = level.groups[group] = self._spare.pop() if self._spare else _Group()
            level.ring.append(group)  # a group new to the ring waits one turn
        entries.push(seq, item)
        self.size += 1

    def _front(self) -> _Level[T] | None:
        for level in self._levels:
            if level.ring:
                return level
        return None

    def peek(self) -> tuple[int, T] | None:
        """The entry whose turn it is, as (sequence, item), without taking it."""
        level = self._front()
        if level is None:
            return None
        entries = level.groups[level.ring[0]]
        fifo, late = entries.fifo, entries.late
        if late and (not fifo or late[0][0] < fifo[0][0]):
            return late[0]
        return fifo[0]

    def pop(self) -> tuple[int, T]:
        """Take the entry whose turn it is; its group goes to the back of the ring."""
        level = self._front()
        assert level is not None, "pop from an empty FairQueue"
        group = level.ring.popleft()
        entries = level.groups[group]
        fifo, late = entries.fifo, entries.late
        if late and (not fifo or late[0][0] < fifo[0][0]):
            entry = heapq.heappop(late)
        else:
            entry = fifo.popleft()
        self.size -= 1
        if fifo or late:
            level.ring.append(group)
        else:
            self._retire(level, group)
        return entry

    def drop(self) -> None:
        """Discard the entry whose turn it is (a stale one) without using up the turn."""
        level = self._front()
        assert level is not None, "drop from an empty FairQueue"
        group = level.ring[0]
        entries = level.groups[group]
        fifo, late = entries.fifo, entries.late
        if late and (not fifo or late[0][0] < fifo[0][0]):
            heapq.heappop(late)
        else:
            fifo.popleft()
        self.size -= 1
        if not (fifo or late):
            level.ring.popleft()
            self._retire(level, group)

    def _retire(self, level: _Level[T], group: str) -> None:
        entries = level.groups.pop(group)
        if len(self._spare) < _SPARE_GROUPS:
            self._spare.append(entries)
