"""Concurrency semaphores: at most `max_runs` holders per (tenant, group key).

A holder (`Holder`) is a whole run, for workflow-level keys — one holder per run, kept
across its replays — or one attempt of a task, for task-level keys. A holder may need
several keys; it is admitted only when every one of them has room, and it then holds all of
them until `release`. PostgreSQL stores a holder as text ("r:<run id>:-" or
"t:<task id>:<attempt>"); `Holder.parse` and `Holder.format` (records.py) are the only
conversions.

Waiting holders sit in ONE key's wait heap at a time — the first key found full — ordered by
priority then arrival, so a key serves its waiters FIFO within a priority. When a key frees
a slot its best waiter is re-gated over all its keys: it is admitted or parks on the next
full key. Every step is O(log n) in waiters; nothing scans.

Strategies act on arrival:
- GROUP_ROUND_ROBIN: wait for a slot. (Turn-taking between keys happens in the assigner's
  per-group ring; here a key can never hold more than max_runs.)
- CANCEL_IN_PROGRESS: the newcomer is admitted as soon as the oldest live holders, which
  are returned for the engine to cancel, have released. A cancelled holder keeps its slot
  until its attempt has really stopped (the worker confirmed or was lost), so the limit
  also holds for work that is still winding down.
- CANCEL_NEWEST: the newcomer is rejected when holders plus waiters already fill the key.

This class only decides; the engine turns decisions into transitions and persists the
holder set (`journal`) in the batch transaction, and restores it with `restore` on start.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import Enum

from services.scheduler.records import Holder, HolderRow, SemId, SemRef

GRR = "GROUP_ROUND_ROBIN"
CANCEL_IN_PROGRESS = "CANCEL_IN_PROGRESS"
CANCEL_NEWEST = "CANCEL_NEWEST"

Order = tuple[int, int, int]  # (-priority, arrival ms, tie-break counter)


@dataclass(slots=True, eq=False)
class Semaphore:
    tenant: str
    key: str
    max_runs: int
    strategy: str
    holders: dict[Holder, None] = field(default_factory=dict)  # insertion order = oldest first
    waiting: list[tuple[Order, Holder]] = field(default_factory=list)
    evicting: set[Holder] = field(default_factory=set)
    n_waiting: int = 0  # live entries in `waiting` (stale ones are skipped lazily)


@dataclass(slots=True, eq=False)
class Entity:
    holder: Holder
    refs: tuple[SemRef, ...]
    order: Order
    held: bool = False
    parked_on: SemId | None = None


class Arrival(Enum):
    ADMITTED = "admitted"
    WAITING = "waiting"
    REJECTED = "rejected"


class Concurrency:
    def __init__(self) -> None:
        self.sems: dict[SemId, Semaphore] = {}
        self.entities: dict[Holder, Entity] = {}
        # Holder rows to write / delete in this batch: (tenant, key, holder) -> ref
        self.journal_put: dict[HolderRow, SemRef] = {}
        self.journal_del: set[HolderRow] = set()
        self.heap_ops = 0  # pushes + pops, for the algorithmic-cost tests

    # queries ------------------------------------------------------------------------
    def holds(self, holder: Holder | str) -> bool:
        """Whether `holder` has its slots; also takes the stored text form (`Holder.format`)."""
        entity = self.entities.get(Holder.parse(holder) if isinstance(holder, str) else holder)
        return entity is not None and entity.held

    def known(self, holder: Holder) -> bool:
        return holder in self.entities

    def running(self, tenant: str, key: str) -> int:
        sem = self.sems.get((tenant, key))
        return len(sem.holders) if sem is not None else 0

    # transitions --------------------------------------------------------------------
    def arrive(
        self, holder: Holder, refs: list[SemRef], order: Order, *, apply_strategy: bool = True
    ) -> tuple[Arrival, list[Holder]]:
        """A new holder wants its keys. Returns the outcome and holders to cancel."""
        if holder in self.entities:
            return (Arrival.ADMITTED if self.entities[holder].held else Arrival.WAITING), []
        sems = [self._sem(ref) for ref in refs]
        evict: list[Holder] = []
        if apply_strategy:
            for sem in sems:
                if sem.strategy == CANCEL_NEWEST and self._occupancy(sem) >= sem.max_runs:
                    return Arrival.REJECTED, []
            for sem in sems:
                if sem.strategy == CANCEL_IN_PROGRESS:
                    evict.extend(self._evictions(sem))
        entity = Entity(holder, tuple(refs), order)
        self.entities[holder] = entity
        admitted = self._gate(entity, fifo=True)
        return (Arrival.ADMITTED if admitted else Arrival.WAITING), evict

    def release(self, holder: Holder) -> list[Holder]:
        """Drop a holder (held or waiting). Returns the holders admitted as a result."""
        entity = self.entities.pop(holder, None)
        if entity is None:
            return []
        if not entity.held:
            if entity.parked_on is not None:
                parked = self.sems.get(entity.parked_on)
                if parked is not None:
                    parked.n_waiting -= 1  # its heap entry is skipped lazily
                    self._forget_if_idle(parked)
            return []
        freed: list[Semaphore] = []
        for ref in entity.refs:
            sem = self.sems.get(ref.id)
            if sem is not None and holder in sem.holders:
                del sem.holders[holder]
                sem.evicting.discard(holder)
                self.journal_put.pop((ref.tenant, ref.key, holder), None)
                self.journal_del.add((ref.tenant, ref.key, holder))
                freed.append(sem)
        admitted: list[Holder] = []
        for sem in freed:
            self._pump(sem, admitted)
        for sem in freed:
            self._forget_if_idle(sem)
        return admitted

    def restore(self, holder: Holder, refs: list[SemRef], order: Order) -> None:
        """A holder read back from PostgreSQL after a restart: it holds, whatever the count."""
        entity = self.entities.get(holder)
        if entity is None:
            entity = Entity(holder, tuple(refs), order, held=True)
            self.entities[holder] = entity
        for ref in refs:
            self._sem(ref).holders[holder] = None

    # internals ----------------------------------------------------------------------
    def _sem(self, ref: SemRef) -> Semaphore:
        sem = self.sems.get(ref.id)
        if sem is None:
            sem = Semaphore(ref.tenant, ref.key, max(1, ref.max_runs), ref.strategy)
            self.sems[ref.id] = sem
        else:
            sem.max_runs = max(1, ref.max_runs)  # the newest definition wins
            sem.strategy = ref.strategy
        return sem

    def _forget_if_idle(self, sem: Semaphore) -> None:
        """A key nobody holds or waits for is dropped (a key per input value would otherwise
        stay forever); `_sem` makes it again on the next arrival."""
        if not sem.holders and sem.n_waiting <= 0 and not sem.evicting:
            self.sems.pop((sem.tenant, sem.key), None)

    def _head(self, sem: Semaphore) -> Entity | None:
        """The best live waiter parked on this key; stale heap entries are dropped."""
        while sem.waiting:
            order, holder = sem.waiting[0]
            entity = self.entities.get(holder)
            if (
                entity is not None
                and not entity.held
                and entity.parked_on == (sem.tenant, sem.key)
                and entity.order == order
            ):
                return entity
            heapq.heappop(sem.waiting)
            self.heap_ops += 1
        return None

    def _occupancy(self, sem: Semaphore) -> int:
        return len(sem.holders) + sem.n_waiting

    def _evictions(self, sem: Semaphore) -> list[Holder]:
        """Oldest live members (holders first, then waiters) to cancel so a newcomer fits."""
        live = [h for h in sem.holders if h not in sem.evicting]
        excess = len(live) + sem.n_waiting + 1 - sem.max_runs
        out: list[Holder] = []
        for holder in live[: max(0, excess)]:
            sem.evicting.add(holder)
            out.append(holder)
        excess -= len(out)
        while excess > 0:
            head = self._head(sem)
            if head is None:
                break
            heapq.heappop(sem.waiting)
            self.heap_ops += 1
            sem.n_waiting -= 1
            head.parked_on = None  # no longer waiting anywhere; the engine cancels it
            out.append(head.holder)
            excess -= 1
        return out

    def _gate(self, entity: Entity, *, fifo: bool) -> bool:
        """Admit the entity if all its keys have room, else park it on the first full one."""
        for ref in entity.refs:
            sem = self._sem(ref)  # a key dropped while idle is made again
            full = len(sem.holders) >= sem.max_runs
            if not full and fifo:
                head = self._head(sem)
                full = head is not None and head is not entity and head.order < entity.order
            if full:
                entity.parked_on = ref.id
                heapq.heappush(sem.waiting, (entity.order, entity.holder))
                sem.n_waiting += 1
                self.heap_ops += 1
                return False
        entity.parked_on = None
        entity.held = True
        for ref in entity.refs:
            self._sem(ref).holders[entity.holder] = None
            self.journal_del.discard((ref.tenant, ref.key, entity.holder))
            self.journal_put[(ref.tenant, ref.key, entity.holder)] = ref
        return True

    def _pump(self, sem: Semaphore, admitted: list[Holder]) -> None:
        while len(sem.holders) < sem.max_runs:
            head = self._head(sem)
            if head is None:
                return
            heapq.heappop(sem.waiting)
            self.heap_ops += 1
            sem.n_waiting -= 1
            head.parked_on = None
            if self._gate(head, fifo=False):
                admitted.append(head.holder)
