"""What one scheduler batch takes in: every report, and a bounded share of commands per tenant.

A consumer hands the core loop a `Work` (one fetched batch of messages) and waits until it is
committed. One tenant's storm of commands — a bulk cancel of 20,000 runs, a flood of
triggers — would otherwise be applied in one batch, and every other tenant's assignments
would wait for that batch's commit. Here a batch applies at most `budget` commands of each
tenant; the rest stay in a per-tenant backlog, in arrival order, and go first in the next
batches. A Work is done (its messages acked) only once all its items were applied and
committed, so a crash in between loses nothing: the messages are redelivered.

Reports are never held back: they free worker slots and settle tasks, and holding them
would delay the very assignments this protects.

Timers take turns with messages (`TimerTurn`): while a storm of timeouts fills every batch
with its share, a batch that carries messages fires none, so a trigger's batch commits only
its own rows and not a hundred timeouts' as well.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

CMD_TENANT_BUDGET = 500

Item = tuple["Work", str, object]  # (work it came in, tenant, decoded message)


@dataclass(slots=True, eq=False)
class Work:
    kind: str  # "cmd" | "report"
    items: list[tuple[str, object]]  # (tenant, decoded message)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    left: int = 0  # items not applied yet


class Intake:
    """Slices the inbox's works into batches fair across tenants."""

    def __init__(self, budget: int = CMD_TENANT_BUDGET) -> None:
        if budget < 1:
            raise ValueError(f"budget must be at least 1, got {budget}")
        self._budget = budget
        self._backlog: dict[str, deque[tuple[Work, object]]] = {}

    def pending(self) -> bool:
        """Commands are waiting for a batch (the loop must not sleep)."""
        return bool(self._backlog)

    def held_works(self) -> set[Work]:
        return {work for queue in self._backlog.values() for work, _ in queue}

    def take(self, works: list[Work]) -> list[Item]:
        """The items of the next batch: the backlog first, then the new works."""
        out: list[Item] = []
        used: dict[str, int] = {}
        for tenant in list(self._backlog):
            queue = self._backlog[tenant]
            n = min(len(queue), self._budget)
            for _ in range(n):
                work, msg = queue.popleft()
                out.append((work, tenant, msg))
            used[tenant] = n
            if not queue:
                del self._backlog[tenant]
        budget = self._budget
        for work in works:
            work.left = len(work.items)
            hold = work.kind == "cmd"
            for tenant, msg in work.items:
                if hold and (tenant in self._backlog or used.get(tenant, 0) >= budget):
                    self._backlog.setdefault(tenant, deque()).append((work, msg))
                    continue
                if hold:
                    used[tenant] = used.get(tenant, 0) + 1
                out.append((work, tenant, msg))
        return out

    @staticmethod
    def completed(items: list[Item], works: list[Work]) -> list[Work]:
        """After the batch committed: the works whose every item has now been applied."""
        for work, _, _ in items:
            work.left -= 1
        seen: set[int] = set()
        done: list[Work] = []
        for work in [*works, *(w for w, _, _ in items)]:
            if work.left <= 0 and id(work) not in seen:
                seen.add(id(work))
                done.append(work)
        return done

    def drop(self) -> set[Work]:
        """Forget the backlog (a failed batch: state is reloaded, messages redelivered);
        returns the works it held, to be failed."""
        held = self.held_works()
        self._backlog.clear()
        return held


class TimerTurn:
    """Whether the next batch fires due timers.

    Normally every batch does. But once a batch fired its full share (`limit`: a storm is
    coming due), the next batch that carries messages fires none: its commit, which the
    messages' assignments wait for, then writes only their rows. The batch after it fires
    timers again whatever it carries, so a storm loses at most every other batch to messages
    and a timer is late by at most one batch of messages.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._storm = False  # the last batch that fired timers fired its full share
        self._skipped = False  # and the batch after it fired none

    def fires(self, carries_messages: bool) -> bool:
        if carries_messages and self._storm and not self._skipped:
            self._skipped = True
            return False
        self._skipped = False
        return True

    def fired(self, count: int) -> None:
        self._storm = count >= self._limit
