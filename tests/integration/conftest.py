"""Real NATS + PostgreSQL, with the services running in-process on the session loop.

Each test gets its own tenant (and token), so tests never see each other's runs or workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from ratchet import Ratchet, Worker

from libs.common import db, tokens
from libs.common.settings import Settings, load_settings
from services.api.service import ApiService
from services.dispatcher.service import DispatcherService
from services.scheduler.service import SchedulerService


@dataclass
class Stack:
    settings: Settings
    api: ApiService
    scheduler: SchedulerService
    dispatcher: DispatcherService

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.dispatcher.port}"


@pytest.fixture(scope="session")
async def stack(nats_url: str, database_url: str) -> AsyncIterator[Stack]:
    settings = load_settings(
        nats_url=nats_url,
        database_url=database_url,
        api_port=0,
        grpc_port=0,
        dispatcher_id=f"test-{uuid.uuid4().hex[:8]}",
        worker_heartbeat_timeout_s=4.0,
        # Webhook callbacks and alerts (test_callbacks.py, test_alerts.py): retries and
        # alert windows short enough to watch.
        delivery_backoff_base_s=0.2, delivery_backoff_max_s=1.0, alert_window_s=2.0,
        alert_check_interval_s=1.0, alert_pool_empty_s=2.0,
        # RATCHET_SMTP_URL when set, else a free port where test_alerts.py starts aiosmtpd.
        ratchet_smtp_url=os.environ.get("RATCHET_SMTP_URL")
        or f"smtp://127.0.0.1:{_free_port()}?from=alerts@ratchet.test",
    )
    scheduler = SchedulerService(settings)
    dispatcher = DispatcherService(settings)
    api = ApiService(settings)
    for svc in (scheduler, dispatcher, api):
        await svc.start()
    stack = Stack(settings, api, scheduler, dispatcher)
    try:
        yield stack
    finally:
        # From the Stack, not the locals: a test may have replaced a service (a restart).
        for svc in (stack.api, stack.dispatcher, stack.scheduler):
            await svc.stop()


@pytest.fixture
async def tenant(stack: Stack) -> str:
    tenant_id = "t" + uuid.uuid4().hex[:12]
    pool = await db.create_pool(stack.settings.database_url, max_size=1)
    try:
        token = await tokens.ensure_tenant(pool, tenant_id)
    finally:
        await pool.close()
    stack.tokens = getattr(stack, "tokens", {})  # type: ignore[attr-defined]
    stack.tokens[tenant_id] = token  # type: ignore[attr-defined]
    return tenant_id


@pytest.fixture
async def client(stack: Stack, tenant: str) -> AsyncIterator[Ratchet]:
    token = stack.tokens[tenant]  # type: ignore[attr-defined]
    r = Ratchet(token=token, api_url=stack.api_url, grpc_addr=stack.grpc_addr)
    yield r
    await r.aclose()
    r.close()


WorkerFactory = Callable[..., Awaitable[Worker]]


def _free_port() -> int:
    """A port nothing listens on now (test_alerts.py starts its SMTP server there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def start_worker(client: Ratchet) -> AsyncIterator[WorkerFactory]:
    """Start SDK workers on the test loop; they are stopped (drained) after the test."""
    started: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(*args: object, **kwargs: object) -> Worker:
        worker = client.worker(*args, **kwargs)  # type: ignore[arg-type]
        task = asyncio.create_task(worker.astart())
        started.append((worker, task))
        done, _ = await asyncio.wait(
            {task, asyncio.ensure_future(worker.wait_connected(30))},
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            task.result()
        return worker

    yield start
    for worker, task in started:
        await worker.astop(drain_timeout_s=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0, interval_s: float = 0.05
) -> None:
    """Poll `check` until it returns True, failing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(interval_s)
