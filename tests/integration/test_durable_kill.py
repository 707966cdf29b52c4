"""A durable task's sleep and event wait survive SIGKILLs of its worker (a subprocess)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from conftest import Stack, eventually
from ratchet import Ratchet

from services.matcher.service import MatcherService

pytestmark = pytest.mark.asyncio(loop_scope="session")

SLEEP_S = 6.0
KILL_AFTER_S = 3.0

WORKER = """
import sys
from datetime import timedelta
from ratchet import DurableContext, Ratchet

r = Ratchet()
name = sys.argv[1]

@r.durable_task(name=name, execution_timeout=timedelta(minutes=5))
async def approve(input: dict, ctx: DurableContext) -> dict:
    start = await ctx.aio_now()
    await ctx.aio_sleep_for(timedelta(seconds=input["sleep_s"]))
    woke = await ctx.aio_now()
    ev = await ctx.aio_wait_for_event("kill.approval", expression="input.doc_id == '1'")
    return {"start": start.timestamp(), "woke": woke.timestamp(), "by": ev["user"],
            "attempt": ctx.attempt}

r.worker("kill-" + name, workflows=[approve], slots=1).start()
"""


@pytest.fixture(scope="module")
async def matcher(stack: Stack) -> AsyncIterator[MatcherService]:
    svc = MatcherService(stack.settings, durable=f"matcher-kill-{uuid.uuid4().hex[:6]}")
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
def spawn(stack: Stack, tenant: str) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, RATCHET_TOKEN=stack.tokens[tenant],  # type: ignore[attr-defined]
                   RATCHET_API_URL=stack.api_url, RATCHET_GRPC_ADDR=stack.grpc_addr)
        proc = subprocess.Popen([sys.executable, "-c", WORKER, name], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_sleep_and_event_wait_survive_worker_kills(
    client: Ratchet, stack: Stack, tenant: str, matcher: MatcherService, spawn: Any
) -> None:
    name = f"approve-{uuid.uuid4().hex[:6]}"
    pg = await asyncpg.connect(stack.settings.database_url)

    async def waiting_at(position: int) -> bool:
        row = await pg.fetchrow(
            "SELECT waiting_attempt, registered_at FROM durable_log"
            " WHERE tenant_id = $1 AND position = $2 AND status = 'pending'", tenant, position)
        return row is not None and row["waiting_attempt"] is not None

    try:
        first = spawn(name)
        wf = client.workflow(name)
        await eventually(lambda: _registered(client, name), timeout_s=30)
        version = (await client.workflows.aio_versions(name))[0]["id"]
        ref = await wf.aio_run_no_wait({"sleep_s": SLEEP_S}, version_id=version)
        await eventually(lambda: waiting_at(1), timeout_s=30)  # parked in its sleep
        registered = await pg.fetchval(
            "SELECT registered_at FROM durable_log WHERE tenant_id = $1 AND position = 1", tenant)
        # Kill the worker well into the sleep: a restarted sleep would end KILL_AFTER_S late.
        await eventually(lambda: _after(registered.timestamp() + KILL_AFTER_S), timeout_s=30)
        first.send_signal(signal.SIGKILL)
        second = spawn(name)  # replays: the sleep resumes with its original deadline
        await eventually(lambda: waiting_at(3), timeout_s=60)  # now waiting for the event
        second.send_signal(signal.SIGKILL)
        # While no worker is connected: a non-matching event (ignored), then the matching one.
        await client.events.aio_push("kill.approval", {"doc_id": "2", "user": "mallory"})
        await client.events.aio_push("kill.approval", {"doc_id": "1", "user": "ann"})
        await eventually(lambda: _wait_done(pg, tenant, 3), timeout_s=30)
        spawn(name)  # gets the recorded event at once
        out = (await ref.aio_result(60))[name]
    finally:
        await pg.close()
    assert out["by"] == "ann"
    assert out["attempt"] >= 2
    slept = out["woke"] - out["start"]
    assert SLEEP_S <= slept < SLEEP_S + KILL_AFTER_S - 0.5  # the original deadline was kept


async def _registered(client: Ratchet, name: str) -> bool:
    try:
        return bool(await client.workflows.aio_versions(name))
    except Exception:
        return False


async def _after(ts: float) -> bool:
    return time.time() >= ts


async def _wait_done(pg: asyncpg.Connection, tenant: str, position: int) -> bool:
    status = await pg.fetchval(
        "SELECT status FROM durable_log WHERE tenant_id = $1 AND position = $2", tenant, position)
    return bool(status == "done")

