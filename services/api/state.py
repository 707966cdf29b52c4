"""What request handlers share: the pool, JetStream, token cache and run waiters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.common import subjects, tenants
from libs.common.messages import STATE_CHANGES_DECODER, StateChanges
from libs.common.settings import Settings
from libs.common.specs import WorkflowSpec

TERMINAL_RUN = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})


@dataclass(eq=False)
class ApiState:
    settings: Settings
    pool: asyncpg.Pool
    nc: NATS
    js: JetStreamContext
    tokens: tenants.TokenCache
    waiters: dict[str, set[asyncio.Future[str]]] = field(default_factory=dict)
    _versions: dict[tuple[str, str], tuple[float, str, str]] = field(default_factory=dict)
    _sub: object = None
    _specs: dict[str, WorkflowSpec] = field(default_factory=dict)
    olap: Any = None  # libs.common.olap.OlapClient, set by ApiService
    # Other consumers of every state-change batch (the dashboard's live pages). Called on the
    # NATS callback, so each must only hand the batch on, never block.
    change_listeners: list[Callable[[StateChanges], None]] = field(default_factory=list)
    # Set when the service begins to stop, so long-lived responses (SSE) end and let it.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.TASK_CHANGES_ALL, cb=self._on_changes)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]

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
            if change.status in TERMINAL_RUN:
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

    # Latest version per workflow, cached briefly: runs are triggered far more than registered.
    def cached_version(self, tenant: str, name: str) -> tuple[str, str] | None:
        hit = self._versions.get((tenant, name))
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1], hit[2]

    def cache_version(self, tenant: str, name: str, version_id: str, spec_json: str) -> None:
        if len(self._versions) > 10_000:
            self._versions.clear()
        self._versions[(tenant, name)] = (time.monotonic() + 2.0, version_id, spec_json)

    def spec_of(self, version_id: str, spec_json: str) -> WorkflowSpec:
        """Versions are immutable: decode each spec once."""
        spec = self._specs.get(version_id)
        if spec is None:
            if len(self._specs) > 10_000:
                self._specs.clear()
            spec = msgspec.json.decode(spec_json, type=WorkflowSpec)
            self._specs[version_id] = spec
        return spec
