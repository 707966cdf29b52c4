"""Fan-out of the API's state-change feed to the dashboard's open pages (Server-Sent Events).

The API already receives every scheduler batch (`ApiState._on_changes`); the broadcaster is
one more listener on it. Each open page is a `Subscription` that sees only its own tenant and,
optionally, one run. A subscription keeps at most the latest state per run / task (newer
changes overwrite older ones, which is all a page shows), and at most MAX_PENDING of those:
past that it drops what it held and asks the page to reload the affected region instead. So a
slow or stalled browser costs a bounded amount of memory and never slows the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from libs.common.messages import StateChanges
from services.api.state import ApiState

MAX_PENDING = 512
MAX_SUBSCRIPTIONS = 1000


@dataclass(eq=False)
class Subscription:
    """What one open page is waiting for, coalesced until it takes it."""

    tenant: str
    run_id: str | None = None  # only this run (a run-detail page); None: every run of the tenant
    runs: dict[str, tuple[str, int]] = field(default_factory=dict)  # id -> (status, created ms)
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> latest state
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> tuple[dict[str, tuple[str, int]], dict[str, str], bool]:
        """The pending changes (runs, tasks, overflowed), leaving the subscription empty."""
        runs, tasks, overflowed = self.runs, self.tasks, self.overflowed
        self.runs, self.tasks, self.overflowed = {}, {}, False
        self.wake.clear()
        return runs, tasks, overflowed

    def _offer(self, bucket: dict[str, Any], key: str, value: Any) -> None:
        if key not in bucket and len(self.runs) + len(self.tasks) >= MAX_PENDING:
            # Too far behind to be worth catching up item by item: the page reloads instead.
            self.runs.clear()
            self.tasks.clear()
            self.overflowed = True
        if not self.overflowed:
            bucket[key] = value
        self.wake.set()


class Broadcaster:
    """Routes each state-change batch to the subscriptions of its tenant."""

    def __init__(self) -> None:
        self._by_tenant: dict[str, set[Subscription]] = {}
        self._count = 0

    @classmethod
    def of(cls, api: ApiState) -> Broadcaster:
        """The API's broadcaster, created and hooked to its change feed on first use."""
        for listener in api.change_listeners:
            owner = getattr(listener, "__self__", None)
            if isinstance(owner, Broadcaster):
                return owner
        made = cls()
        api.change_listeners.append(made.publish)
        return made

    def subscribe(self, tenant: str, run_id: str | None = None) -> Subscription:
        if self._count >= MAX_SUBSCRIPTIONS:
            raise OverflowError("too many live dashboard pages are open")
        sub = Subscription(tenant=tenant, run_id=run_id)
        self._by_tenant.setdefault(tenant, set()).add(sub)
        self._count += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._by_tenant.get(sub.tenant)
        if subs is not None and sub in subs:
            subs.discard(sub)
            self._count -= 1
            if not subs:
                del self._by_tenant[sub.tenant]

    def publish(self, changes: StateChanges) -> None:
        """Hand one batch to the interested subscriptions (never blocks)."""
        if not self._by_tenant:
            return
        for run in changes.runs:
            for sub in self._by_tenant.get(run.tenant, ()):
                if sub.run_id is None or sub.run_id == run.run_id:
                    sub._offer(sub.runs, run.run_id, (run.status, run.created_ms))
        for task in changes.tasks:
            for sub in self._by_tenant.get(task.tenant, ()):
                if sub.run_id == task.run_id:
                    sub._offer(sub.tasks, task.task_id, task.state)


async def wait_for_run(
    api: ApiState, tenant: str, run_id: str, exists: Callable[[], Awaitable[bool]],
    timeout_s: float,
) -> bool:
    """Wait until a just-triggered run is stored (True), or `timeout_s` passes (False).

    Triggers are asynchronous: a page opened right after one may beat the scheduler. The
    subscription is taken before `exists` is checked, so the run's first state change (which
    the scheduler publishes after storing it) cannot slip between the two.
    """
    hub = Broadcaster.of(api)
    sub = hub.subscribe(tenant, run_id)
    try:
        if await exists():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.wake.wait(), timeout_s)
        return await exists()
    finally:
        hub.unsubscribe(sub)
