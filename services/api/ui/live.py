"""Fan-out of the API's state-change feed to the dashboard's open pages (Server-Sent Events).

The API already receives every scheduler batch (`ApiState._on_changes`); the broadcaster is
one more listener on it. Each open page is a `Subscription` of one tenant that watches a few
runs: the rows a runs list shows, or the one run of a run page (and its tasks). Changes are
routed by run id, so a batch costs one dict lookup per change however many pages are open,
plus one counter update per runs-list page of a tenant that created runs ("3 new runs").

A subscription keeps at most the latest state per run / task (newer changes overwrite older
ones, which is all a page shows), and at most MAX_PENDING of those: past that it drops what it
held and asks the page to reload instead. So a slow or stalled browser costs a bounded amount
of memory and never slows the feed.

Each subscription also knows the token its page logged in with: a revocation broadcast ends
that token's streams at once (the streams re-check the token every second besides, for expiry
and for a broadcast that was lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from libs.common.messages import StateChanges
from services.api.state import ApiState

MAX_PENDING = 512
MAX_SUBSCRIPTIONS = 1000


@dataclass(eq=False)
class Subscription:
    """What one open page is waiting for, coalesced until it takes it."""

    tenant: str
    watch: frozenset[str]  # run ids whose changes this page shows
    token_id: str = ""  # the token the page's session uses
    ended: bool = False  # that token was revoked: the stream ends
    tasks_of: str | None = None  # a run page: also the task changes of this run
    counts_created: bool = False  # a runs list: count runs created since it subscribed
    runs: dict[str, str] = field(default_factory=dict)  # run id -> latest status
    tasks: dict[str, str] = field(default_factory=dict)  # task id -> latest state
    created: int = 0
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self) -> tuple[dict[str, str], dict[str, str], bool]:
        """The pending changes (runs, tasks, overflowed), leaving the subscription empty."""
        runs, tasks, overflowed = self.runs, self.tasks, self.overflowed
        self.runs, self.tasks, self.overflowed = {}, {}, False
        self.wake.clear()
        return runs, tasks, overflowed

    def _offer(self, bucket: dict[str, str], key: str, value: str) -> None:
        if key not in bucket and len(self.runs) + len(self.tasks) >= MAX_PENDING:
            # Too far behind to be worth catching up item by item: the page reloads instead.
            self.runs.clear()
            self.tasks.clear()
            self.overflowed = True
        if not self.overflowed:
            bucket[key] = value
        self.wake.set()


class Broadcaster:
    """Routes each state-change batch to the subscriptions watching its runs."""

    def __init__(self) -> None:
        self._by_run: dict[str, set[Subscription]] = {}
        self._lists: dict[str, set[Subscription]] = {}  # tenant -> subs counting new runs
        self._subs: set[Subscription] = set()

    @classmethod
    def of(cls, api: ApiState) -> Broadcaster:
        """The API's broadcaster, created and hooked to its change feed on first use."""
        for listener in api.change_listeners:
            owner = getattr(listener, "__self__", None)
            if isinstance(owner, Broadcaster):
                return owner
        made = cls()
        api.change_listeners.append(made.publish)
        api.tokens.on_revoke(made.revoked)
        return made

    def subscribe(
        self, tenant: str, watch: frozenset[str] = frozenset(), *, tasks_of: str | None = None,
        counts_created: bool = False, token_id: str = "",
    ) -> Subscription:
        if len(self._subs) >= MAX_SUBSCRIPTIONS:
            raise OverflowError("too many live dashboard pages are open")
        if tasks_of is not None:
            watch = watch | {tasks_of}
        sub = Subscription(tenant=tenant, watch=watch, tasks_of=tasks_of,
                           counts_created=counts_created, token_id=token_id)
        for run_id in watch:
            self._by_run.setdefault(run_id, set()).add(sub)
        if counts_created:
            self._lists.setdefault(tenant, set()).add(sub)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub not in self._subs:
            return
        self._subs.discard(sub)
        for run_id in sub.watch:
            subs = self._by_run.get(run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_run[run_id]
        lists = self._lists.get(sub.tenant)
        if lists is not None:
            lists.discard(sub)
            if not lists:
                del self._lists[sub.tenant]

    async def revoked(self, token_id: str) -> None:
        """A token was revoked: wake its pages' streams so they end now."""
        for sub in self._subs:
            if sub.token_id == token_id:
                sub.ended = True
                sub.wake.set()

    def publish(self, changes: StateChanges) -> None:
        """Hand one batch to the interested subscriptions (never blocks)."""
        if not self._subs:
            return
        created: dict[str, int] = {}
        for run in changes.runs:
            for sub in self._by_run.get(run.run_id, ()):
                if sub.tenant == run.tenant:
                    sub._offer(sub.runs, run.run_id, run.status)
            # A run's first announcement carries its creation time as its own time; a replay
            # (PENDING again) keeps the original creation time, so it is not counted as new.
            if run.status == "PENDING" and run.created_ms == run.ts_ms and self._lists:
                created[run.tenant] = created.get(run.tenant, 0) + 1
        for task in changes.tasks:
            for sub in self._by_run.get(task.run_id, ()):
                if sub.tasks_of == task.run_id and sub.tenant == task.tenant:
                    sub._offer(sub.tasks, task.task_id, task.state)
        for st in changes.states:  # a run's ctx.set_state: its page shows the new value
            for sub in self._by_run.get(st.run_id, ()):
                if sub.tasks_of == st.run_id and sub.tenant == st.tenant:
                    sub.wake.set()
        for tenant, n in created.items():
            for sub in self._lists.get(tenant, ()):
                sub.created += n
                sub.wake.set()


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
    sub = hub.subscribe(tenant, frozenset({run_id}))
    try:
        if await exists():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.wake.wait(), timeout_s)
        return await exists()
    finally:
        hub.unsubscribe(sub)
