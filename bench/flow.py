"""`make bench-flow`: debounce, batching and idempotency keys on a private stack.

The bench starts a stack of its own (`tools.devstack` in a temporary run directory, its own
NATS and PostgreSQL, every service a process as `make up` runs them) so it measures this
tree's code and disturbs no one's `make up`; it is stopped and removed at the end. A no-op
worker (20 slots) runs in this process. Three workloads, each in a tenant of its own:

- debounce: 10,000 events (REST bulk pushes of 1,000) over 100 keys into a workflow
  debounced on `input.key` (period 2 s, max_wait 60 s) -> exactly 100 runs. Lateness of a
  run = the moment the scheduler created it minus its window's deadline (both read from
  PostgreSQL: runs.created_at, flow_windows.deadline); `debounce_start_late_p50/p99_ms`.
  `debounce_task_start_late_p99_ms` adds the wait for a worker slot (first task started).
- batch: 10,000 API triggers (bulk requests of 1,000, 4 at a time) into batches of 50 ->
  exactly 200 runs of 50 items; `batched_triggers_per_s` = 10,000 / (first request -> the
  last batch's run succeeded); `batch_accept_per_s` = the rate the API answered them.
- idempotency: 10,000 single-trigger requests carrying 1,000 distinct keys, each key sent 10
  times at once (10 requests in flight, a key's 10 copies together) -> exactly 1,000 runs; `idempotent_triggers_per_s`
  is the API's answer rate (the worker starts after both request phases, so it takes no CPU
  from them). The same 10,000 requests without keys (10,000 runs) give
  `plain_triggers_per_s`; `idempotent_vs_plain` is their ratio (goal >= 0.8).

Counts are checked and written as measured (`*_runs`), never assumed. The machine is
shared: figures move with whatever else runs on it. Results: bench/results/flow-<ts>.json.
Env: BENCH_FLOW_N (10000).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from ratchet import Batch, Context, Debounce, Ratchet

from bench.cluster import Stack

N = int(os.environ.get("BENCH_FLOW_N", "10000"))
DEBOUNCE_KEYS = 100
BATCH_SIZE = 50
IDEMPOTENCY_KEYS = N // 10
IN_FLIGHT = 10  # requests in flight: the 10 copies of one key go together
SLOTS = 20


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench-flow: {what} not reached within {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


class Bench:
    def __init__(self, stack: Stack, pool: asyncpg.Pool) -> None:
        self.stack = stack
        self.pool = pool
        self.env = stack.env()

    async def client(self, prefix: str) -> tuple[str, Ratchet]:
        tenant = f"{prefix}-{int(time.time())}"
        token = await asyncio.to_thread(self.stack.ensure_tenant, tenant)
        return tenant, Ratchet(token=token, api_url=self.env["RATCHET_API_URL"],
                               grpc_addr=self.env["RATCHET_GRPC_ADDR"])

    async def succeeded(self, tenant: str, workflow: str) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = $1 AND workflow = $2"
            " AND status = 'SUCCEEDED'", tenant, workflow)
        return count

    async def finished(self, tenant: str, workflow: str) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = $1 AND workflow = $2"
            " AND status NOT IN ('PENDING', 'RUNNING')", tenant, workflow)
        return count

    async def runs(self, tenant: str, workflow: str) -> int:
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = $1 AND workflow = $2", tenant, workflow)
        return count


async def _serve(r: Ratchet, *workflows: Any) -> tuple[Any, asyncio.Task[None]]:
    worker = r.worker("bench-flow", workflows=list(workflows), slots=SLOTS)
    task = asyncio.create_task(worker.astart())
    await worker.wait_connected(30)
    return worker, task


async def _stop(worker: Any, task: asyncio.Task[None], r: Ratchet) -> None:
    await worker.astop()
    await asyncio.wait_for(task, 30)
    await r.aclose()


def _noop(r: Ratchet, name: str, **kw: Any) -> Any:
    wf = r.workflow(name, **kw)

    # Triggers may wait long for the worker (it starts after the request phases of the
    # idempotency part, on a loaded machine): no schedule timeout may end them first.
    @wf.task(schedule_timeout=timedelta(hours=2))
    async def noop(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {}

    return wf


async def debounce_part(b: Bench) -> dict[str, float]:
    tenant, r = await b.client("flow-deb")
    name = "bench-debounce"
    wf = _noop(r, name, on_events=["bench.msg"], debounce=Debounce(
        key="input.key", period=timedelta(seconds=2), max_wait=timedelta(seconds=60)))
    worker, task = await _serve(r, wf)
    try:
        events = [{"key": "bench.msg", "payload": {"key": f"k{i % DEBOUNCE_KEYS}", "i": i}}
                  for i in range(N)]
        t0 = time.monotonic()
        for start in range(0, N, 1000):
            await r.arequest("POST", "/events/bulk", json={"events": events[start:start + 1000]})
        pushed_s = time.monotonic() - t0

        async def all_done() -> bool:
            return await b.succeeded(tenant, name) >= DEBOUNCE_KEYS

        await _until(all_done, 600, f"{DEBOUNCE_KEYS} debounced runs")
        await asyncio.sleep(3)  # a window opened late would show up as a 101st run by now
        rows = await b.pool.fetch(
            "SELECT extract(epoch FROM r.created_at - w.deadline) * 1000 AS late_ms,"
            " (SELECT extract(epoch FROM min(t.started_at) - w.deadline) * 1000 FROM tasks t"
            "   WHERE t.tenant_id = r.tenant_id AND t.run_id = r.id) AS task_late_ms,"
            " w.items FROM runs r JOIN flow_windows w ON w.tenant_id = r.tenant_id"
            " AND w.run_id = r.id WHERE r.tenant_id = $1", tenant)
        runs = await b.runs(tenant, name)
    finally:
        await _stop(worker, task, r)
    late = [float(x["late_ms"]) for x in rows]
    task_late = [float(x["task_late_ms"]) for x in rows if x["task_late_ms"] is not None]
    return {
        "debounce_events": N, "debounce_keys": DEBOUNCE_KEYS, "debounce_runs": runs,
        "debounce_triggers_held": sum(int(x["items"]) for x in rows),
        "debounce_push_per_s": round(N / pushed_s, 1),
        "debounce_start_late_p50_ms": round(pct(late, 50), 1),
        "debounce_start_late_p99_ms": round(pct(late, 99), 1),
        "debounce_start_late_max_ms": round(max(late), 1),
        "debounce_task_start_late_p99_ms": round(pct(task_late, 99), 1) if task_late else -1.0,
    }


async def batch_part(b: Bench) -> dict[str, float]:
    tenant, r = await b.client("flow-batch")
    name = "bench-batch"
    wf = _noop(r, name, batch=Batch(size=BATCH_SIZE, max_wait=timedelta(seconds=60)))
    worker, task = await _serve(r, wf)
    try:
        await r.aregister(wf)
        gate = asyncio.Semaphore(4)

        async def bulk(start: int) -> None:
            async with gate:
                await r.arequest("POST", f"/workflows/{name}/run/bulk", json={
                    "runs": [{"input": {"i": i}} for i in range(start, min(N, start + 1000))]})

        t0 = time.monotonic()
        await asyncio.gather(*(bulk(s) for s in range(0, N, 1000)))
        accepted_s = time.monotonic() - t0
        want = N // BATCH_SIZE

        async def all_done() -> bool:
            return await b.succeeded(tenant, name) >= want

        await _until(all_done, 600, f"{want} batch runs")
        elapsed = time.monotonic() - t0
        sizes = await b.pool.fetch(
            "SELECT items FROM flow_windows WHERE tenant_id = $1 AND workflow = $2", tenant, name)
        runs = await b.runs(tenant, name)
    finally:
        await _stop(worker, task, r)
    return {
        "batch_triggers": N, "batch_size": BATCH_SIZE, "batch_runs": runs,
        "batch_full_batches": sum(1 for s in sizes if s["items"] == BATCH_SIZE),
        "batch_accept_per_s": round(N / accepted_s, 1),
        "batched_triggers_per_s": round(N / elapsed, 1),
    }


async def _fire(http: httpx.AsyncClient, path: str, bodies: list[dict[str, Any]]) -> float:
    """Send every body (IN_FLIGHT at a time, in order); returns requests per second."""
    queue = iter(bodies)

    async def lane() -> None:
        for body in queue:
            for attempt in range(3):
                try:
                    resp = await http.post(path, json=body)
                    break
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # A kept-alive connection the server closed as this request went out (on
                    # a loaded machine a lane can idle past uvicorn's 5 s keep-alive). Resent:
                    # a keyed trigger is idempotent; a plain one is counted, not assumed.
                    if attempt == 2:
                        raise
            resp.raise_for_status()

    t0 = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return len(bodies) / (time.monotonic() - t0)


async def idempotency_part(b: Bench) -> dict[str, float]:
    tenant, r = await b.client("flow-idem")
    keyed, plain = "bench-idem", "bench-plain"
    wf_keyed, wf_plain = _noop(r, keyed), _noop(r, plain)
    token = r.config.token
    worker: Any = None
    try:
        await r.aregister(wf_keyed, wf_plain)
        async with httpx.AsyncClient(base_url=b.env["RATCHET_API_URL"], timeout=120,
                                     headers={"authorization": f"Bearer {token}"},
                                     limits=httpx.Limits(max_connections=IN_FLIGHT,
                                                         keepalive_expiry=2.0)) as http:
            warm = [{"input": {"warm": i}} for i in range(200)]
            await _fire(http, f"/workflows/{plain}/run", warm)  # connections, caches
            # Each key's 10 copies are adjacent: they are in flight at the same moment.
            keyed_bodies = [{"input": {"k": k}, "idempotency_key": f"order-{k}"}
                            for k in range(IDEMPOTENCY_KEYS) for _ in range(N // IDEMPOTENCY_KEYS)]
            plain_bodies = [{"input": {"k": i}} for i in range(N)]
            plain_rate = await _fire(http, f"/workflows/{plain}/run", plain_bodies)
            keyed_rate = await _fire(http, f"/workflows/{keyed}/run", keyed_bodies)
        # The worker starts only now: the request rates above are the API's alone.
        worker, task = await _serve(r, wf_keyed, wf_plain)

        async def all_done() -> bool:
            return (await b.succeeded(tenant, keyed) >= IDEMPOTENCY_KEYS
                    and await b.finished(tenant, plain) >= N + len(warm))

        await _until(all_done, 1800, "idempotency runs")
        await asyncio.sleep(2)
        keyed_runs = await b.runs(tenant, keyed)
        plain_runs = await b.runs(tenant, plain) - len(warm)
    finally:
        if worker is not None:
            await _stop(worker, task, r)
        else:
            await r.aclose()
    return {
        "idempotent_triggers": N, "idempotency_keys": IDEMPOTENCY_KEYS,
        "idempotent_runs": keyed_runs, "plain_runs": plain_runs,
        "idempotent_triggers_per_s": round(keyed_rate, 1),
        "plain_triggers_per_s": round(plain_rate, 1),
        "idempotent_vs_plain": round(keyed_rate / plain_rate, 3),
    }


PARTS: list[Callable[[Bench], Awaitable[dict[str, float]]]] = [
    debounce_part, batch_part, idempotency_part,
]


def _run_dir() -> Path:
    run_dir = Path(tempfile.mkdtemp(prefix="ratchet-bench-flow-"))
    run_dir.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
    return run_dir


async def main() -> dict[str, Any]:
    run_dir = await asyncio.to_thread(_run_dir)
    stack = Stack(run_dir)
    print(f"bench-flow: starting a private stack in {run_dir}", flush=True)
    stats: dict[str, Any] = {"n": N, "cpus": os.cpu_count() or 0,
                             "note": "shared 2-core machine: other work ran meanwhile",
                             "load_average_before": round(os.getloadavg()[0], 1)}
    pool: asyncpg.Pool | None = None
    try:
        await asyncio.to_thread(stack.up)
        pool = await asyncpg.create_pool(stack.env()["DATABASE_URL"], min_size=1, max_size=2)
        b = Bench(stack, pool)
        for part in PARTS:
            print(f"bench-flow: {part.__name__}", flush=True)
            got = await part(b)
            print(json.dumps(got), flush=True)  # each part's figures as soon as it ends
            stats.update(got)
        stats["load_average_after"] = round(os.getloadavg()[0], 1)
    finally:
        if pool is not None:
            await pool.close()
        await asyncio.to_thread(stack.down)
        shutil.rmtree(run_dir, ignore_errors=True)
    return stats


def run() -> None:
    stats = asyncio.run(main())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path("bench/results") / f"flow-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    ok = (stats["debounce_runs"] == DEBOUNCE_KEYS and stats["batch_runs"] == N // BATCH_SIZE
          and stats["idempotent_runs"] == IDEMPOTENCY_KEYS)
    print(f"bench-flow: counts {'exact' if ok else 'WRONG'}; wrote {out}")


if __name__ == "__main__":
    run()
