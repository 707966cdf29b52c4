"""Two schedulers share the tenants by partitions, hand them over, and a paused one is fenced.

The session stack's scheduler (A) runs in-process. A second one is started in-process (B) for
the sharing and hand-over tests, and as a real process (C) for the pause: SIGSTOP past its
lease, SIGCONT, and it must change nothing of what its successor now owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from conftest import Stack, eventually
from ratchet import DurableContext, Ratchet, Worker

from libs.common import db, tokens
from libs.common.partitions import partition_of
from services.scheduler.service import SchedulerService

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def pg(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(stack.settings.database_url, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def owners(pg: asyncpg.Pool) -> dict[int, str]:
    rows = await pg.fetch(
        "SELECT partition, owner FROM scheduler_partitions"
        " WHERE owner IS NOT NULL AND expires_at > clock_timestamp()"
    )
    return {r["partition"]: r["owner"] for r in rows}


async def epochs(pg: asyncpg.Pool) -> dict[int, int]:
    return {r["partition"]: r["epoch"]
            for r in await pg.fetch("SELECT partition, epoch FROM scheduler_partitions")}


class Tenants:
    """Fresh tenants placed in chosen partitions, each with its own client and workers."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack
        self._clients: list[Ratchet] = []
        self._workers: list[tuple[Worker, asyncio.Task[None]]] = []

    async def client_in(self, partitions: set[int]) -> tuple[str, Ratchet]:
        count = self._stack.scheduler._partition_count
        while True:
            tenant = "t" + uuid.uuid4().hex[:12]
            if partition_of(tenant, count) in partitions:
                break
        pool = await db.create_pool(self._stack.settings.database_url, max_size=1)
        try:
            token = await tokens.ensure_tenant(pool, tenant)
        finally:
            await pool.close()
        client = Ratchet(token=token, api_url=self._stack.api_url,
                         grpc_addr=self._stack.grpc_addr)
        self._clients.append(client)
        return tenant, client

    async def worker(self, client: Ratchet, *args: Any, **kwargs: Any) -> Worker:
        worker = client.worker(*args, **kwargs)
        task = asyncio.create_task(worker.astart())
        self._workers.append((worker, task))
        await worker.wait_connected(30)
        return worker

    async def close(self) -> None:
        for worker, task in self._workers:
            await worker.astop(drain_timeout_s=5)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        for client in self._clients:
            await client.aclose()
            client.close()


@pytest.fixture
async def tenants(stack: Stack) -> AsyncIterator[Tenants]:
    t = Tenants(stack)
    yield t
    await t.close()


def two_step(client: Ratchet, name: str) -> Any:
    wf = client.workflow(name)

    @wf.task()
    def first(input: dict, ctx: Any) -> dict:
        return {"n": input["n"]}

    @wf.task(parents=[first])
    def second(input: dict, ctx: Any) -> dict:
        return {"n2": ctx.parent_output(first)["n"] * 2}

    return wf


async def succeeded_once(client: Ratchet, run_id: str) -> bool:
    run = await client.runs.aio_get(run_id)
    return run["status"] == "SUCCEEDED" and all(
        [a["status"] for a in task["attempts"]].count("SUCCEEDED") == 1
        for task in run["tasks"]
    )


async def test_two_schedulers_split_the_partitions_and_hand_over_on_stop(
    stack: Stack, pg: asyncpg.Pool, tenants: Tenants
) -> None:
    a = stack.scheduler
    b = SchedulerService(msgspec.structs.replace(
        stack.settings, scheduler_instance=f"b-{uuid.uuid4().hex[:6]}"
    ))
    await b.start()
    try:
        await eventually(lambda: _split(pg, a.instance, b.instance), timeout_s=30)
        held = await owners(pg)
        mine_a = {p for p, o in held.items() if o == a.instance}
        mine_b = {p for p, o in held.items() if o == b.instance}
        assert len(mine_a) == len(mine_b) == a._partition_count // 2

        # A tenant of each scheduler: both run DAGs to the end, each task once.
        refs = []
        for name, parts in (("on-a", mine_a), ("on-b", mine_b)):
            _, client = await tenants.client_in(parts)
            wf = two_step(client, name)
            await tenants.worker(client, f"w-{name}", workflows=[wf], slots=4)
            refs += [(client, i, await wf.aio_run_no_wait({"n": i})) for i in range(5)]
        for client, i, ref in refs:
            assert await ref.aio_result() == {"first": {"n": i}, "second": {"n2": 2 * i}}
            await eventually(lambda c=client, r=ref: succeeded_once(c, r.run_id))
        # Each scheduler's engine holds only its own tenants' runs.
        assert not set(b.engine.runs) & set(a.engine.runs)
    finally:
        await b.stop()  # a graceful stop: its partitions are free at once
    await eventually(
        lambda: _all_held_by(pg, a.instance, a._partition_count), timeout_s=15
    )
    # After the hand-over, a tenant of B's former partitions is served by A.
    _, client = await tenants.client_in(mine_b)
    wf = two_step(client, "after")
    await tenants.worker(client, "w-after", workflows=[wf], slots=2)
    assert await wf.aio_run({"n": 4}) == {"first": {"n": 4}, "second": {"n2": 8}}


async def _split(pg: asyncpg.Pool, a: str, b: str) -> bool:
    held = await owners(pg)
    return len(held) > 0 and set(held.values()) == {a, b} and \
        abs(sum(o == a for o in held.values()) - sum(o == b for o in held.values())) <= 1 \
        and len(held) == len(await epochs(pg))


async def _all_held_by(pg: asyncpg.Pool, instance: str, count: int) -> bool:
    held = await owners(pg)
    return len(held) == count and set(held.values()) == {instance}


def _scheduler_process(stack: Stack, instance: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": stack.settings.nats_url,
        "DATABASE_URL": stack.settings.database_url,
        "RATCHET_SCHEDULER_INSTANCE": instance,
        "RATCHET_SCHEDULER_LEASE_S": "2",
        "METRICS_PORT": "0",
        "DATA_DIR": str(log.parent / "data"),
        "LOG_LEVEL": "INFO",
    }
    out = log.open("wb")
    return subprocess.Popen([sys.executable, "-m", "services.scheduler"], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT)


async def test_a_scheduler_paused_past_its_lease_changes_nothing(
    stack: Stack, pg: asyncpg.Pool, tenants: Tenants, tmp_path: Path
) -> None:
    a = stack.scheduler
    instance = f"c-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "scheduler-c.log"
    proc = _scheduler_process(stack, instance, log)
    try:
        await eventually(lambda: _split(pg, a.instance, instance), timeout_s=60)
        held_c = {p for p, o in (await owners(pg)).items() if o == instance}
        before = await epochs(pg)

        # A durable sleep owned by C: its wake-up is one of C's timers when C is paused.
        _, client = await tenants.client_in(held_c)
        wf = client.workflow("nap")
        woke: list[int] = []

        @wf.durable_task(execution_timeout=timedelta(minutes=2))
        async def nap(input: dict, ctx: DurableContext) -> dict:
            await ctx.aio_sleep_for(timedelta(seconds=3))
            woke.append(ctx.attempt)
            return {"slept": True}

        await tenants.worker(client, "w-nap", workflows=[wf], slots=2)
        ref = await wf.aio_run_no_wait({})
        await eventually(lambda: _parked(pg, ref.run_id))  # C recorded the wait

        os.kill(proc.pid, signal.SIGSTOP)
        try:
            # C's lease runs out; A takes every partition (new epochs) and wakes the sleeper.
            await eventually(
                lambda: _all_held_by(pg, a.instance, a._partition_count), timeout_s=30
            )
            assert await ref.aio_result() == {"nap": {"slept": True}}
            during = await client.runs.aio_get(ref.run_id)
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        # C resumes with C's old state in memory and a due timer: it must write nothing.
        # It finds its leases lost, reloads, and comes back for a share under new epochs.
        await eventually(lambda: _split(pg, a.instance, instance), timeout_s=60)
        after = await epochs(pg)
        assert all(after[p] > before[p] for p in held_c)
        run = await client.runs.aio_get(ref.run_id)
        assert run["status"] == "SUCCEEDED"
        assert run["tasks"] == during["tasks"]  # nothing changed by the stale scheduler
        assert woke == [0]
        assert "partition leases lost" in log.read_text()  # it learned, and reloaded
        # And C serves its partitions again.
        wf2 = two_step(client, "after-pause")
        await tenants.worker(client, "w-after-pause", workflows=[wf2], slots=2)
        assert await wf2.aio_run({"n": 1}) == {"first": {"n": 1}, "second": {"n2": 2}}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
        # A takes C's partitions back (C left gracefully, or its lease runs out).
        await eventually(
            lambda: _all_held_by(pg, a.instance, a._partition_count), timeout_s=30
        )


async def _parked(pg: asyncpg.Pool, run_id: str) -> bool:
    return bool(await pg.fetchval(
        "SELECT count(*) FROM durable_log WHERE run_id = $1 AND status = 'pending'"
        " AND waiting_attempt IS NOT NULL", run_id))

