"""`make bench-signals`: how fast a signal or a waitpoint completion wakes a durable task, and
what 1,000 runs parked on signals hold (docs/interaction.md).

Measured:
- `signal_to_wake_p50_ms` / `_p99_ms`: one durable task waits for a signal SIGNAL_SAMPLES
  times in a row on an otherwise idle stack; each signal is sent (POST /runs/{id}/signals/…)
  only once the task is parked at its wait, and the time from just before the POST to the
  task's code running again is one sample: API -> CMD stream -> scheduler (inbox, wait
  completed, one batch committed) -> DSP -> dispatcher -> worker.
- `waitpoint_complete_to_wake_p50_ms` / `_p99_ms`: the same with a waitpoint the task makes
  and a program completes through its signed URL (plain HTTP, no token).
- `parked_runs` / `regular_slots_held_parked`: PARKED_RUNS runs each wait for a signal on a
  worker with PARKED_SLOTS slots; with all of them parked, how many still hold a regular slot
  (tasks RUNNING minus tasks parked, from PostgreSQL). Must be 0.
- `parked_wake_all_s`: one signal to each of those runs (sent PARALLEL_SENDS at a time) until
  the last one has finished.

Env: SIGNAL_SAMPLES (200), WAITPOINT_SAMPLES (100), PARKED_RUNS (1000), PARKED_SLOTS (10).
JSON in bench/results/signals-*.json. A machine shared with other work makes the tails noisy.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from ratchet import DurableContext, Ratchet

from bench.run import pct

SIGNAL_SAMPLES = int(os.environ.get("SIGNAL_SAMPLES", "200"))
WAITPOINT_SAMPLES = int(os.environ.get("WAITPOINT_SAMPLES", "100"))
PARKED_RUNS = int(os.environ.get("PARKED_RUNS", "1000"))
PARKED_SLOTS = int(os.environ.get("PARKED_SLOTS", "10"))
PARALLEL_SENDS = 32
DEADLINE_S = 600.0


async def parked_at(pg: asyncpg.Connection, run_id: str, position: int) -> bool:
    row = await pg.fetchrow(
        "SELECT waiting_attempt FROM durable_log WHERE run_id = $1 AND position = $2"
        " AND status = 'pending'", run_id, position)
    return row is not None and row["waiting_attempt"] is not None


async def until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        await asyncio.sleep(0.002)


async def _signal_latency(r: Ratchet, pg: asyncpg.Connection, stamp: str) -> list[float]:
    woke: list[float] = []

    @r.durable_task(name=f"bench-sig-{stamp}", execution_timeout=timedelta(minutes=30))
    async def listener(input: dict, ctx: DurableContext) -> dict:  # type: ignore[type-arg]
        for _ in range(input["n"]):
            await ctx.aio_wait_for_signal("ping")
            woke.append(time.time())
        return {}

    worker = r.worker(f"bench-sig-{stamp}", workflows=[listener], slots=2)
    task = asyncio.create_task(worker.astart())
    await worker.wait_connected(30)
    try:
        ref = await listener.aio_run_no_wait({"n": SIGNAL_SAMPLES})
        samples: list[float] = []
        for i in range(SIGNAL_SAMPLES):
            await until(lambda i=i: parked_at(pg, ref.run_id, i), f"the wait at {i}")
            sent = time.time()
            await r.runs.aio_signal(ref.run_id, "ping", {"i": i})
            await until(lambda i=i: _true(len(woke) > i), f"wake {i}")
            samples.append((woke[i] - sent) * 1000)
        await ref.aio_result(60)
        return samples
    finally:
        await worker.astop(drain_timeout_s=5)
        await asyncio.gather(task, return_exceptions=True)


async def _true(value: bool) -> bool:
    return value


async def _waitpoint_latency(r: Ratchet, pg: asyncpg.Connection, stamp: str) -> list[float]:
    urls: list[str] = []
    woke: list[float] = []

    @r.durable_task(name=f"bench-wp-{stamp}", execution_timeout=timedelta(minutes=30))
    async def approver(input: dict, ctx: DurableContext) -> dict:  # type: ignore[type-arg]
        for _ in range(input["n"]):
            wp = await ctx.aio_create_waitpoint(timeout=timedelta(hours=1), label="bench")
            urls.append(wp.url)
            await ctx.aio_wait_for_waitpoint(wp)
            woke.append(time.time())
        return {}

    worker = r.worker(f"bench-wp-{stamp}", workflows=[approver], slots=2)
    task = asyncio.create_task(worker.astart())
    await worker.wait_connected(30)
    try:
        ref = await approver.aio_run_no_wait({"n": WAITPOINT_SAMPLES})
        samples: list[float] = []
        async with httpx.AsyncClient(timeout=30) as anon:
            for i in range(WAITPOINT_SAMPLES):
                # Positions: 2i the waitpoint made, 2i + 1 its wait.
                await until(lambda i=i: parked_at(pg, ref.run_id, 2 * i + 1), f"waitpoint {i}")
                sent = time.time()
                resp = await anon.post(urls[i], json={"i": i})
                resp.raise_for_status()
                await until(lambda i=i: _true(len(woke) > i), f"wake {i}")
                samples.append((woke[i] - sent) * 1000)
        await ref.aio_result(60)
        return samples
    finally:
        await worker.astop(drain_timeout_s=5)
        await asyncio.gather(task, return_exceptions=True)


async def _parked(r: Ratchet, pg: asyncpg.Connection, stamp: str) -> dict[str, Any]:
    name = f"bench-parked-{stamp}"

    @r.durable_task(name=name, execution_timeout=timedelta(minutes=30))
    async def waiter(input: dict, ctx: DurableContext) -> dict:  # type: ignore[type-arg]
        return {"go": await ctx.aio_wait_for_signal("go")}

    worker = r.worker(name, workflows=[waiter], slots=PARKED_SLOTS)
    task = asyncio.create_task(worker.astart())
    await worker.wait_connected(30)
    try:
        run_ids: list[str] = []
        for i in range(0, PARKED_RUNS, 1000):
            body = {"runs": [{"input": {"i": k}} for k in range(i, min(PARKED_RUNS, i + 1000))]}
            out = await r.arequest("POST", f"/workflows/{name}/run/bulk", json=body)
            run_ids.extend(out["run_ids"])
        held = -1

        async def all_parked() -> bool:
            nonlocal held
            row = await pg.fetchrow(
                "SELECT (SELECT count(*) FROM tasks t JOIN runs r ON r.tenant_id = t.tenant_id"
                "  AND r.id = t.run_id WHERE r.workflow = $1 AND t.status = 'RUNNING') AS running,"
                " (SELECT count(*) FROM durable_log l JOIN runs r ON r.tenant_id = l.tenant_id"
                "  AND r.id = l.run_id WHERE r.workflow = $1 AND l.status = 'pending'"
                "  AND l.waiting_attempt IS NOT NULL) AS parked", name)
            assert row is not None
            held = int(row["running"]) - int(row["parked"])
            return int(row["parked"]) >= PARKED_RUNS

        await until(all_parked, f"{PARKED_RUNS} parked runs", timeout_s=DEADLINE_S)
        print(f"all {PARKED_RUNS} parked on a signal; regular slots held by them: {held}",
              flush=True)
        started = time.time()
        sem = asyncio.Semaphore(PARALLEL_SENDS)

        async def send(run_id: str) -> None:
            async with sem:
                await r.runs.aio_signal(run_id, "go", {"run": run_id})

        await asyncio.gather(*(send(x) for x in run_ids))
        for run_id in run_ids:
            await r.runs.aio_get(run_id, wait_s=60)
        return {"parked_runs": PARKED_RUNS, "parked_slots": PARKED_SLOTS,
                "regular_slots_held_parked": held,
                "parked_wake_all_s": round(time.time() - started, 2)}
    finally:
        await worker.astop(drain_timeout_s=5)
        await asyncio.gather(task, return_exceptions=True)


async def main() -> dict[str, Any]:
    r = Ratchet()
    pg = await asyncpg.connect(os.environ["DATABASE_URL"])
    stamp = str(int(time.time()))
    try:
        sig = sorted(await _signal_latency(r, pg, stamp))
        print(f"signal -> wake p50 {pct(sig, 50):.1f} ms", flush=True)
        wp = sorted(await _waitpoint_latency(r, pg, stamp))
        print(f"waitpoint completion -> wake p50 {pct(wp, 50):.1f} ms", flush=True)
        parked = await _parked(r, pg, stamp)
    finally:
        await pg.close()
        await r.aclose()
    return {
        "bench": "signals",
        "signal_samples": len(sig),
        "signal_to_wake_p50_ms": round(pct(sig, 50), 1),
        "signal_to_wake_p99_ms": round(pct(sig, 99), 1),
        "signal_to_wake_max_ms": round(sig[-1], 1),
        "waitpoint_samples": len(wp),
        "waitpoint_complete_to_wake_p50_ms": round(pct(wp, 50), 1),
        "waitpoint_complete_to_wake_p99_ms": round(pct(wp, 99), 1),
        **parked,
    }


def run() -> None:
    result = asyncio.run(main())
    print(json.dumps(result, indent=2))
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"signals-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    run()
