"""What request handlers share: the pool, JetStream, token cache, repositories, run waiters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.common import limits, subjects
from libs.common.messages import STATE_CHANGES_DECODER, StateChanges
from libs.common.olap import OlapClient
from libs.common.payloads import PayloadStore, open_store
from libs.common.settings import Settings
from libs.common.statuses import RUN_TERMINAL
from libs.common.tokens import TokenCache
from services.api.input_schema import InputValidators
from services.api.repos.alerts import AlertRepo
from services.api.repos.analytics import AnalyticsRepo
from services.api.repos.audit import AuditRepo
from services.api.repos.crons import CronRepo
from services.api.repos.deliveries import DeliveryRepo
from services.api.repos.events import EventRepo
from services.api.repos.filters import FilterRepo
from services.api.repos.flow import FlowRepo
from services.api.repos.interaction import InteractionRepo
from services.api.repos.limits import LimitRepo
from services.api.repos.rate_limits import RateLimitRepo
from services.api.repos.runs import RunRepo
from services.api.repos.scheduled import ScheduledRepo
from services.api.repos.tokens import TokenRepo
from services.api.repos.webhooks import WebhookRepo
from services.api.repos.workers import WorkerRepo
from services.api.repos.workflows import WorkflowRepo


@dataclass(eq=False)
class ApiState:
    settings: Settings
    pool: asyncpg.Pool
    nc: NATS
    js: JetStreamContext
    tokens: TokenCache
    olap: OlapClient | None = None
    waiters: dict[str, set[asyncio.Future[str]]] = field(default_factory=dict)
    inputs: InputValidators = field(default_factory=InputValidators)
    _subs: list[object] = field(default_factory=list)
    # Other consumers of every state-change batch (the dashboard's live pages). Called on the
    # NATS callback, so each must only hand the batch on, never block.
    change_listeners: list[Callable[[StateChanges], None]] = field(default_factory=list)
    # Set when the service begins to stop, so long-lived responses (SSE) end and let it.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Large run inputs, outputs and event payloads (services/api/actions/offload.py).
    payloads: PayloadStore | None = None
    # Where audit entries of publish-only changes are written (AuditRepo.record); `pool` if unset.
    audit_pool: asyncpg.Pool | None = None
    # Where this API is reached, for links in alerts (RATCHET_PUBLIC_URL, else the bound address).
    public_url: str = ""

    def __post_init__(self) -> None:
        self.workflows = WorkflowRepo(self.pool)
        self.runs = RunRepo(self.pool)
        self.interaction = InteractionRepo(self.pool)  # signals, state, waitpoints, forks
        self.crons = CronRepo(self.pool)
        self.scheduled = ScheduledRepo(self.pool)
        self.filters = FilterRepo(self.pool)
        self.flow = FlowRepo(self.pool)
        self.rate_limits = RateLimitRepo(self.pool)
        self.analytics = AnalyticsRepo(self.olap)
        self.event_log = EventRepo(self.olap)
        self.worker_registry = WorkerRepo(self.pool, self.js)
        self.token_repo = TokenRepo(self.pool)
        self.audit = AuditRepo(self.pool, self.audit_pool or self.pool)
        self.usage = LimitRepo(self.pool)
        self.limits = limits.LimitCache(self.pool)
        self.webhooks = WebhookRepo(self.pool)
        self.deliveries = DeliveryRepo(self.pool)
        self.alerts = AlertRepo(self.pool)
        self.rates = limits.RateLimiter()
        if self.payloads is None:
            self.payloads = open_store(self.settings)

    @property
    def store(self) -> PayloadStore:
        """The payload store (`payloads`, opened when the state is created if not given)."""
        assert self.payloads is not None, "ApiState opens its payload store when created"
        return self.payloads

    async def start(self) -> None:
        await self.tokens.listen(self.nc)
        self._subs.append(await self.nc.subscribe(subjects.TASK_CHANGES_ALL, cb=self._on_changes))
        # Workflow changes are announced to the matchers; another API replica's rollback must
        # reach this replica's cached current versions just as fast.
        self._subs.append(await self.nc.subscribe(subjects.MATCHER_CHANGES, cb=self._on_workflows))

    async def stop(self) -> None:
        await self.tokens.close()
        if self.payloads is not None:
            await self.payloads.close()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        self._subs.clear()

    async def _on_workflows(self, msg: Msg) -> None:
        self.workflows.forget(msg.data.decode(errors="replace"))

    async def _on_changes(self, msg: Msg) -> None:
        if not self.waiters and not self.change_listeners:
            return
        try:
            changes = STATE_CHANGES_DECODER.decode(msg.data)
        except Exception:
            return
        for listener in self.change_listeners:
            listener(changes)
        for change in changes.runs:
            if change.status in RUN_TERMINAL:
                for fut in self.waiters.pop(change.run_id, ()):
                    if not fut.done():
                        fut.set_result(change.status)

    def waiter(self, run_id: str) -> asyncio.Future[str]:
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(run_id, set()).add(fut)
        return fut

    def forget(self, run_id: str, fut: asyncio.Future[str]) -> None:
        bucket = self.waiters.get(run_id)
        if bucket is not None:
            bucket.discard(fut)
            if not bucket:
                del self.waiters[run_id]
