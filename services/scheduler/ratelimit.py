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
no worker slot) and parked on the blocking key until the log says enough units have aged
out, then goes back to the ready queue with its original place in line.

Admissions are journaled and written in the batch's transaction (`fairness_store`), and
read back on start, so a restart neither forgets recent starts nor double-counts them.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

PER_MS = {"second": 1_000, "minute": 60_000, "hour": 3_600_000}
UNKNOWN_RECHECK_MS = 500

LimitId = tuple[str, str]  # (tenant, key)


@dataclass(frozen=True, slots=True)
class LimitDef:
    limit: int
    per_ms: int
    burst: int | None = None


@dataclass(frozen=True, slots=True)
class Need:
    """Units of one key a task takes when it starts (key and units evaluated at enqueue)."""

    key: str
    units: int
    dynamic: LimitDef | None = None  # limit/per declared inline for a dynamic key


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


@dataclass(slots=True)
class Admission:
    tenant: str
    key: str
    ts_ms: int
    units: int
    task_id: str
    attempt: int


class RateLimiter:
    def __init__(self) -> None:
        self.defs: dict[LimitId, LimitDef] = {}
        self._windows: dict[LimitId, _Window] = {}
        self._buckets: dict[LimitId, _Bucket] = {}
        # tasks parked per key: (order, task id, attempt), best first
        self._parked: dict[LimitId, list[tuple[tuple[int, int, int], str, int]]] = {}
        self._wake: list[tuple[int, str, str]] = []  # (due ms, tenant, key)
        self._wake_due: dict[LimitId, int] = {}
        self.journal: list[Admission] = []

    # definitions ----------------------------------------------------------------------
    def define(self, tenant: str, key: str, d: LimitDef) -> None:
        old = self.defs.get((tenant, key))
        self.defs[(tenant, key)] = d
        if old is not None and old != d:
            self._buckets.pop((tenant, key), None)
        if (tenant, key) in self._parked:
            self._schedule_wake(tenant, key, 0)

    def _def(self, tenant: str, need: Need) -> LimitDef | None:
        found = self.defs.get((tenant, need.key))
        return found if found is not None else need.dynamic

    # decisions ------------------------------------------------------------------------
    def try_take(
        self, tenant: str, needs: list[Need], now_ms: int, task_id: str, attempt: int
    ) -> tuple[str | None, int]:
        """Take all needed units, or none. Returns (None, 0) or (blocking key, wake ms)."""
        for need in needs:
            d = self._def(tenant, need)
            if d is None:
                return need.key, now_ms + UNKNOWN_RECHECK_MS
            wake = self._wait_until(tenant, need, d, now_ms)
            if wake is not None:
                return need.key, wake
        for need in needs:
            d = self._def(tenant, need)
            assert d is not None
            lid = (tenant, need.key)
            if d.burst is not None:
                self._buckets[lid].tokens -= need.units
            else:
                window = self._windows.setdefault(lid, _Window())
                window.log.append((now_ms, need.units))
                window.used += need.units
            self.journal.append(Admission(tenant, need.key, now_ms, need.units, task_id, attempt))
        return None, 0

    def _wait_until(self, tenant: str, need: Need, d: LimitDef, now_ms: int) -> int | None:
        """None when `need` fits now, else the earliest time it could."""
        lid = (tenant, need.key)
        if d.burst is not None:
            capacity = max(d.burst, 1)
            bucket = self._buckets.get(lid)
            if bucket is None:
                bucket = self._buckets[lid] = _Bucket(float(capacity), now_ms)
            bucket.refill(now_ms, d, capacity)
            if bucket.tokens >= need.units:
                return None
            missing = need.units - bucket.tokens
            return now_ms + max(1, int(missing * d.per_ms / d.limit) + 1)
        window = self._windows.get(lid)
        if window is None:
            return None if need.units <= d.limit else now_ms + d.per_ms
        window.expire(now_ms, d.per_ms)
        if window.used + need.units <= d.limit:
            return None
        must_free = window.used + need.units - d.limit
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

    # parking --------------------------------------------------------------------------
    def park(
        self, tenant: str, key: str, order: tuple[int, int, int], task_id: str, attempt: int,
        wake_ms: int,
    ) -> None:
        heapq.heappush(self._parked.setdefault((tenant, key), []), (order, task_id, attempt))
        self._schedule_wake(tenant, key, wake_ms)

    def _schedule_wake(self, tenant: str, key: str, due_ms: int) -> None:
        current = self._wake_due.get((tenant, key))
        if current is None or due_ms < current:
            self._wake_due[(tenant, key)] = due_ms
            heapq.heappush(self._wake, (due_ms, tenant, key))

    def next_wake_ms(self) -> int | None:
        return self._wake[0][0] if self._wake else None

    def due(self, now_ms: int) -> list[tuple[str, int]]:
        """Parked (task id, attempt)s whose key may have room again, best first per key.

        Only as many as the key can start right now are released (at least one), so a key
        with thousands parked does not churn them all through the ready queue each window.
        """
        out: list[tuple[str, int]] = []
        while self._wake and self._wake[0][0] <= now_ms:
            due, tenant, key = heapq.heappop(self._wake)
            lid = (tenant, key)
            if self._wake_due.get(lid) != due:
                continue
            del self._wake_due[lid]
            parked = self._parked.get(lid)
            if not parked:
                self._parked.pop(lid, None)
                continue
            room = self._room(lid, now_ms)
            released = 0
            while parked and (released == 0 or released < room):
                _order, task_id, attempt = heapq.heappop(parked)
                out.append((task_id, attempt))
                released += 1
            if parked:
                d = self.defs.get(lid)
                self._schedule_wake(tenant, key, now_ms + (d.per_ms // 10 if d else 100) + 1)
            else:
                del self._parked[lid]
        return out

    def _room(self, lid: LimitId, now_ms: int) -> int:
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

    def parked_count(self) -> int:
        return sum(len(p) for p in self._parked.values())

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
