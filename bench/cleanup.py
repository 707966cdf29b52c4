"""Benches run in a tenant of their own and leave nothing queued behind.

A bench that triggers runs no worker will ever serve (bench-events) or stops while thousands
are still queued (bench-fairness) would otherwise leave them to hit their schedule timeout
all at once, hours later, in the middle of someone else's measurement. `bench_tenant`
creates the tenant (and a token for it); `cancel_leftovers` waits until the scheduler has
taken in every run the bench triggered, then cancels whatever is still active.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

from libs.common import jetstream, subjects, tokens
from libs.common.jetstream import Outgoing
from libs.common.messages import CancelRuns, encode

CANCEL_CHUNK = 1000
ACTIVE = "status IN ('PENDING', 'RUNNING')"


async def bench_tenant(pool: asyncpg.Pool | asyncpg.Connection, prefix: str) -> tuple[str, str]:
    """A fresh tenant `<prefix>-<random>` and a token for it."""
    tenant = f"{prefix}-{uuid.uuid4().hex[:8]}"
    token = await tokens.ensure_tenant(pool, tenant)
    return tenant, token


async def cancel_leftovers(
    pool: asyncpg.Pool, js: Any, tenant: str, *, expected_runs: int, timeout_s: float = 300.0
) -> int:
    """Cancel every active run of the bench tenant; returns how many were cancelled.

    Triggers still in the CMD stream would create runs after a cancel pass, so first wait
    (bounded) until `expected_runs` runs exist, then cancel and re-check until none is active.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        have = await pool.fetchval("SELECT count(*) FROM runs WHERE tenant_id = $1", tenant)
        if have >= expected_runs:
            break
        await asyncio.sleep(0.5)
    cancelled = 0
    round_no = 0
    while time.monotonic() < deadline:
        ids = [r["id"] for r in await pool.fetch(
            f"SELECT id FROM runs WHERE tenant_id = $1 AND {ACTIVE}", tenant
        )]
        if not ids:
            return cancelled
        if round_no == 0:
            cancelled = len(ids)
        # A run still active in a later round was cancelled before its trigger was applied,
        # or its cancel is still queued: send it again under a new msg-id.
        batch = [
            Outgoing(subjects.cmd(tenant, "run.cancel"),
                     encode(CancelRuns(run_ids=ids[i:i + CANCEL_CHUNK], reason="bench cleanup")),
                     f"bench-cleanup:{tenant}:{round_no}:{i}")
            for i in range(0, len(ids), CANCEL_CHUNK)
        ]
        await jetstream.publish_batch(js, batch)
        round_no += 1
        settle = time.monotonic() + 30
        while time.monotonic() < min(settle, deadline):
            await asyncio.sleep(0.5)
            left = await pool.fetchval(
                f"SELECT count(*) FROM runs WHERE tenant_id = $1 AND {ACTIVE}", tenant
            )
            if left == 0:
                return cancelled
    raise TimeoutError(f"bench tenant {tenant}: runs still active after {timeout_s:.0f} s")
