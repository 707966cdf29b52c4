"""Rate limits: how many units of a key may START per second, minute or hour.

Default semantics — an exact sliding window: for every key, the units of the attempts
started in ANY interval of length `per` never exceed `limit`. Each key keeps a log of
(start ms, units) covering the last `per`; a start at time t is allowed when the units
logged in (t - per, t] plus its own stay within `limit`. Any window [a, a + per) that
contains starts also lies inside (t_last - per, t_last] of its latest start, which was
checked, so the property holds for all windows, not only the ones we looked at.

With an explicit `burst` the key is a token bucket instead: `burst` units of capacity,
refilled continuously at limit/per. It lets a quiet key start `burst` units at once and
then `limit` per `per`, so a window may see up to burst + limit units. Choose it only when
the provider's quota really is a bucket.

Units are taken when a task is assigned to a worker (its start as far as the scheduler can
tell), never while it waits: a rate-limited task is taken out of the ready queue (it holds
no worker slot) and parked in the blocking key's waiting line until the log says enough
units have aged out, then goes back to the ready queue with its original place in line.

The waiting line takes turns like the ready queue (`FairQueue`: priority first, then the
fairness groups in turn, FIFO within a group), so when a flood of one group has thousands
parked, a trickle group's task is released at the group's next turn, not after all of them.
While a key has a line, it is the only way in: a task that did not come out of the line
joins it instead of taking units that free up (otherwise fresh tasks of the flooding group
would take every unit the moment it ages out and the line would starve). A task released
from the line holds a pass: the units it needs are kept for it, for PASS_TTL_MS, while it
waits for a worker. Releases happen when the log says the head of the line fits (at most
every RELEASE_GAP_MS), and only as many as fit, so the line never churns through the
ready queue.

Releases are also paced at limit/per (at most PACE_BURST_MS worth at once). Without it a
saturated window phase-locks: a clump of starts ages out together a `per` later and is
taken at once by the next clump, so units free up only in bursts and a task that arrives
between them waits most of a window whatever its turn (bench-fairness measured a p95 of
~0.5 s at 150/s). Paced, the log evens out and units free up every per/limit. Only keys
with a line are paced: an idle key still lets a burst of `limit` start at once.

None of this changes what the window admits: a start is still only allowed when the log
says it fits.

Admissions are journaled and written in the batch's transaction (persistence/fairness.py),
and read back on start, so a restart neither forgets recent starts nor double-counts them.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.scheduler.engine.fairqueue import FairQueue
from services.scheduler.records import Admission, LimitDef, LimitId, Need

PER_MS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000}
UNKNOWN_RECHECK_MS = 500
RELEASE_GAP_MS = 25  # releases from one line are at least this far apart (batching)
PASS_TTL_MS = 1_000  # how long units stay kept for a task released from a line
PACE_BURST_MS = 50  # a line releases limit/per, with at most this much of it at once
# How often keys with nothing left to remember are dropped: a window whose starts all aged
# out, a bucket refilled to capacity, the definition of a dynamic key (one per input value
# when the key is an expression) that has neither.
SWEEP_MS = 60_000

@dataclass(slots=True, eq=False)
class _Window:
    log: deque[tuple[int, int]] = field(default_factory=deque)  # (start ms, units)
    used: int = 0

    def expire(self, now_ms: int, per_ms: int) -> None:
        while self.log and self.log[0][0] <= now_ms - per_ms:
            self.used -= self.log.popleft()[1]


@dataclass(slots=True, eq=False)
class _Bucket:
    tokens: float
    last_ms: int

    def refill(self, now_ms: int, d: LimitDef, capacity: int) -> None:
        if now_ms > self.last_ms:
            self.tokens = min(capacity, self.tokens + (now_ms - self.last_ms) * d.limit / d.per_ms)
            self.last_ms = now_ms


@dataclass(frozen=True, slots=True)
class Waiter:
    """A task asking for units: who it is and where it stands in a waiting line."""

    task_id: str
    attempt: int
    priority: int
    group: str  # fairness group: groups take turns in the line
    seq: int  # place in line (the task's queue sequence number; unique)


Parked = tuple[str, int, int]  # (task id, attempt, units of the line's key)
Waiting = Callable[[str, int], bool]  # (task id, attempt) -> still parked and worth waking


@dataclass(slots=True, eq=False)
class _Line:
    """The tasks parked on one key, and the units kept for those released from it."""

    queue: FairQueue[Parked] = field(default_factory=FairQueue)
    passes: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # -> units, ms
    issued: deque[tuple[int, tuple[str, int]]] = field(default_factory=deque)  # (ms, holder)
    pass_units: int = 0
    # Releases are paced at limit/per: `pace` is the units the line may release now,
    # refilled continuously and capped at PACE_BURST_MS worth (see `RateLimiter.due`).
    pace: float = -1.0  # -1: a new line, starts full
    pace_ms: int = 0

    def refill(self, d: LimitDef, now_ms: int) -> float:
        cap = _pace_cap(d)
        if self.pace < 0:
            self.pace = cap
        elif now_ms > self.pace_ms:
            self.pace = min(cap, self.pace + (now_ms - self.pace_ms) * d.limit / d.per_ms)
        self.pace_ms = now_ms
        return cap

    def grant(self, holder: tuple[str, int], units: int, now_ms: int) -> None:
        self.use(holder)  # a holder released again keeps one pass, not two
        self.passes[holder] = (units, now_ms)
        self.issued.append((now_ms, holder))
        self.pass_units += units

    def use(self, holder: tuple[str, int]) -> None:
        found = self.passes.pop(holder, None)
        if found is not None:
            self.pass_units -= found[0]

    def prune(self, now_ms: int) -> None:
        """Forget passes not used within PASS_TTL_MS (the task went elsewhere or died)."""
        issued = self.issued
        while issued and issued[0][0] <= now_ms - PASS_TTL_MS:
            released_ms, holder = issued.popleft()
            found = self.passes.get(holder)
            if found is not None and found[1] == released_ms:
                del self.passes[holder]
                self.pass_units -= found[0]

    def kept_for_others(self, holder: tuple[str, int]) -> int:
        own = self.passes.get(holder)
        return self.pass_units - (own[0] if own is not None else 0)


def _pace_cap(d: LimitDef) -> float:
    return max(1.0, d.limit * PACE_BURST_MS / d.per_ms)


class RateLimiter:
    def __init__(self) -> None:
        self.defs: dict[LimitId, LimitDef] = {}
        self._windows: dict[LimitId, _Window] = {}
        self._buckets: dict[LimitId, _Bucket] = {}
        self._lines: dict[LimitId, _Line] = {}  # waiting lines, one per key with waiters
        self._wake: list[tuple[int, str, str]] = []  # (due ms, tenant, key)
        self._wake_due: dict[LimitId, int] = {}
        self.journal: list[Admission] = []
        self._dynamic: set[LimitId] = set()  # definitions that came with a workflow spec
        self._swept_ms = 0

    # definitions ----------------------------------------------------------------------
    def define(self, tenant: str, key: str, d: LimitDef) -> None:
        old = self.defs.get((tenant, key))
        self.defs[(tenant, key)] = d
        self._dynamic.discard((tenant, key))  # defined through the API: kept
        if old is not None and old != d:
            self._buckets.pop((tenant, key), None)
        if (tenant, key) in self._lines:
            self._schedule_wake(tenant, key, 0)

    def _def(self, tenant: str, need: Need) -> LimitDef | None:
        found = self.defs.get((tenant, need.key))
        return found if found is not None else need.dynamic

    # decisions ------------------------------------------------------------------------
    def try_take(
        self, tenant: str, needs: list[Need], now_ms: int, task_id: str, attempt: int
    ) -> tuple[str | None, int]:
        """Take all needed units, or none. Returns (None, 0) or (blocking key, wake ms).

        A key with a waiting line blocks everyone but the tasks released from it, and the
        units kept for those released tasks count as used for everyone else.
        """
        holder = (task_id, attempt)
        for need in needs:
            d = self._def(tenant, need)
            if d is None:
                return need.key, now_ms + UNKNOWN_RECHECK_MS
            kept = 0
            line = self._lines.get((tenant, need.key))
            if line is not None:
                line.prune(now_ms)
                if line.queue and holder not in line.passes:
                    return need.key, self._wake_due.get((tenant, need.key), now_ms)
                kept = line.kept_for_others(holder)
            wake = self._wait_until(tenant, need, d, now_ms, kept)
            if wake is not None:
                return need.key, wake
        for need in needs:
            d = self._def(tenant, need)
            assert d is not None
            self.remember_dynamic(tenant, need)  # its window needs it until it is swept
            lid = (tenant, need.key)
            if d.burst is not None:
                self._buckets[lid].tokens -= need.units
            else:
                window = self._windows.setdefault(lid, _Window())
                window.log.append((now_ms, need.units))
                window.used += need.units
            line = self._lines.get(lid)
            if line is not None:
                line.use(holder)
                if not line.queue and not line.passes:
                    del self._lines[lid]
            self.journal.append(Admission(tenant, need.key, now_ms, need.units, task_id, attempt))
        return None, 0

    def take_or_park(self, tenant: str, needs: list[Need], now_ms: int, waiter: Waiter) -> bool:
        """Take the units `needs` (True), or park `waiter` in the blocking key's line."""
        blocking, wake_ms = self.try_take(tenant, needs, now_ms, waiter.task_id, waiter.attempt)
        if blocking is None:
            return True
        units = next(n.units for n in needs if n.key == blocking)
        line = self._lines.get((tenant, blocking))
        if line is None:
            line = self._lines[(tenant, blocking)] = _Line()
        line.queue.push(waiter.priority, waiter.group, waiter.seq,
                        (waiter.task_id, waiter.attempt, units))
        self._schedule_wake(tenant, blocking, wake_ms)
        return False

    def _wait_until(
        self, tenant: str, need: Need, d: LimitDef, now_ms: int, kept: int = 0
    ) -> int | None:
        """None when `need` fits now beside `kept` units promised to others, else the
        earliest time it could (assuming the promises are used now)."""
        lid = (tenant, need.key)
        want = need.units + kept
        if d.burst is not None:
            capacity = max(d.burst, 1)
            bucket = self._buckets.get(lid)
            if bucket is None:
                bucket = self._buckets[lid] = _Bucket(float(capacity), now_ms)
            bucket.refill(now_ms, d, capacity)
            if bucket.tokens >= want:
                return None
            missing = want - bucket.tokens
            return now_ms + max(1, int(missing * d.per_ms / d.limit) + 1)
        window = self._windows.get(lid)
        if window is None:
            return None if want <= d.limit else now_ms + d.per_ms
        window.expire(now_ms, d.per_ms)
        if window.used + want <= d.limit:
            return None
        must_free = window.used + want - d.limit
        freed = 0
        for ts, units in window.log:
            freed += units
            if freed >= must_free:
                return ts + d.per_ms
        return now_ms + d.per_ms  # more units than the limit: re-checked, then failed

    def fits_ever(self, tenant: str, need: Need) -> bool:
        d = self._def(tenant, need)
        if d is None:
            return True  # not defined yet: wait for the definition
        return need.units <= (max(d.burst, 1) if d.burst is not None else d.limit)

    # waiting lines ------------------------------------------------------------------
    def _schedule_wake(self, tenant: str, key: str, due_ms: int) -> None:
        current = self._wake_due.get((tenant, key))
        if current is None or due_ms < current:
            self._wake_due[(tenant, key)] = due_ms
            heapq.heappush(self._wake, (due_ms, tenant, key))

    def next_wake_ms(self) -> int | None:
        return self._wake[0][0] if self._wake else None

    def due(self, now_ms: int, waiting: Waiting | None = None) -> list[tuple[str, int]]:
        """Parked (task id, attempt)s to put back in the ready queue now, in turn order.

        For each key whose wake time has come, the line gives entries in turn for as long
        as their units fit beside the units already kept for earlier releases; each one
        released gets a pass. Entries `waiting` says are gone (cancelled, timed out) are
        dropped without using up a turn.
        """
        if now_ms - self._swept_ms >= SWEEP_MS:
            self.sweep(now_ms)
        out: list[tuple[str, int]] = []
        while self._wake and self._wake[0][0] <= now_ms:
            due_ms, tenant, key = heapq.heappop(self._wake)
            lid = (tenant, key)
            if self._wake_due.get(lid) != due_ms:
                continue
            del self._wake_due[lid]
            line = self._lines.get(lid)
            if line is None:
                continue
            line.prune(now_ms)
            room = self._room(lid, now_ms) - line.pass_units
            d = self.defs.get(lid)
            cap = line.refill(d, now_ms) if d is not None else 0.0
            while (top := line.queue.peek()) is not None:
                task_id, attempt, units = top[1]
                if waiting is not None and not waiting(task_id, attempt):
                    line.queue.drop()
                    continue
                if units > room or (d is not None and line.pace < min(units, cap)):
                    break
                line.queue.pop()
                room -= units
                line.pace -= units  # a task bigger than the cap leaves a debt
                line.grant((task_id, attempt), units, now_ms)
                out.append((task_id, attempt))
            if line.queue:
                self._schedule_wake(tenant, key, self._next_release_ms(lid, line, now_ms))
            elif not line.passes:
                del self._lines[lid]
        return out

    def _room(self, lid: LimitId, now_ms: int) -> int:
        """Units of `lid` that could start now (one for a key not defined yet: a recheck)."""
        d = self.defs.get(lid)
        if d is None:
            return 1
        if d.burst is not None:
            bucket = self._buckets.get(lid)
            if bucket is None:
                return max(d.burst, 1)
            bucket.refill(now_ms, d, max(d.burst, 1))
            return int(bucket.tokens)
        window = self._windows.get(lid)
        if window is None:
            return d.limit
        window.expire(now_ms, d.per_ms)
        return d.limit - window.used

    def _next_release_ms(self, lid: LimitId, line: _Line, now_ms: int) -> int:
        """When the head of `line` may fit and the pace allows it: no sooner than
        RELEASE_GAP_MS from now."""
        top = line.queue.peek()
        d = self.defs.get(lid)
        if top is None or d is None:
            return now_ms + UNKNOWN_RECHECK_MS
        units = top[1][2]
        at = self._wait_until(lid[0], Need(lid[1], units), d, now_ms, line.pass_units) or now_ms
        if line.issued:  # kept units come back when an unused pass expires
            at = min(at, line.issued[0][0] + PASS_TTL_MS)
        short = min(units, _pace_cap(d)) - line.pace
        if short > 0:
            at = max(at, now_ms + int(short * d.per_ms / d.limit) + 1)
        return max(at, now_ms + RELEASE_GAP_MS)

    # restore --------------------------------------------------------------------------
    def restore(self, adm: Admission) -> None:
        """Replay an admission read back from PostgreSQL (call in start-time order)."""
        lid = (adm.tenant, adm.key)
        d = self.defs.get(lid)
        if d is not None and d.burst is not None:
            capacity = max(d.burst, 1)
            bucket = self._buckets.get(lid)
            if bucket is None:
                bucket = self._buckets[lid] = _Bucket(float(capacity), adm.ts_ms)
            bucket.refill(adm.ts_ms, d, capacity)
            bucket.tokens -= adm.units
            return
        window = self._windows.setdefault(lid, _Window())
        window.log.append((adm.ts_ms, adm.units))
        window.used += adm.units

    def remember_dynamic(self, tenant: str, need: Need) -> None:
        """Dynamic keys carry their definition in the workflow spec; keep the newest."""
        if need.dynamic is not None and (tenant, need.key) not in self.defs:
            self.defs[(tenant, need.key)] = need.dynamic
            self._dynamic.add((tenant, need.key))

    def sweep(self, now_ms: int) -> None:
        """Forget keys whose state says nothing any more (see SWEEP_MS)."""
        self._swept_ms = now_ms
        for lid, window in list(self._windows.items()):
            d = self.defs.get(lid)
            if d is not None:
                window.expire(now_ms, d.per_ms)
            if not window.log and lid not in self._lines:
                del self._windows[lid]
        for lid, bucket in list(self._buckets.items()):
            d = self.defs.get(lid)
            if d is None or d.burst is None or lid in self._lines:
                continue
            capacity = max(d.burst, 1)
            bucket.refill(now_ms, d, capacity)
            if bucket.tokens >= capacity:
                del self._buckets[lid]
        for lid in list(self._dynamic):
            if lid not in self._windows and lid not in self._buckets and lid not in self._lines:
                self._dynamic.discard(lid)
                self.defs.pop(lid, None)

    def size(self) -> dict[str, int]:
        """How many keys each structure holds (for tests and metrics)."""
        return {"defs": len(self.defs), "windows": len(self._windows),
                "buckets": len(self._buckets), "lines": len(self._lines),
                "wake": len(self._wake)}
