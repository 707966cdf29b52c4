"""`make bench-durable`: 1,000 durable tasks each sleep 1 s on a worker with 10 slots.

Each task first waits durably for a gate event, so that all 1,000 are asleep at once, then
sleeps `DURABLE_SLEEP_S`. Measured:
- `regular_slots_held_asleep`: with every task asleep at the gate, how many of them still hold
  a regular slot (tasks RUNNING minus tasks parked in a wait, from PostgreSQL). Must be 0:
  sleepers count against `durable_slots`, not `slots`.
- `wake_late_p50_ms` / `wake_late_p99_ms`: how long after its sleep's end (the moment it
  asked + 1 s) each task was running again. Woken tasks need a regular slot to run, so with
  10 slots the wake-ups of 1,000 simultaneous sleepers queue behind each other: the p99 is
  mostly that queue, the p50 the scheduler → dispatcher → worker hop.
- `tasks_per_s`: the whole batch, trigger to last result.

Env: DURABLE_TASKS (1000), DURABLE_SLOTS (10), DURABLE_SLEEP_S (1.0).
JSON in bench/results/durable-*.json; `make bench-children` runs it too (bench/children.py
PARTS) and adds its figures to children-*.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from ratchet import DurableContext, Ratchet

from bench.run import pct

TASKS = int(os.environ.get("DURABLE_TASKS", "1000"))
SLOTS = int(os.environ.get("DURABLE_SLOTS", "10"))
SLEEP_S = float(os.environ.get("DURABLE_SLEEP_S", "1.0"))


async def held_while_asleep(pg: asyncpg.Connection, workflow: str, deadline: float) -> int:
    """Poll until every task is parked; then regular slots held = RUNNING - parked."""
    held = -1
    while time.time() < deadline:
        row = await pg.fetchrow(
            "SELECT (SELECT count(*) FROM tasks t JOIN runs r ON r.tenant_id = t.tenant_id"
            "        AND r.id = t.run_id WHERE r.workflow = $1 AND t.status = 'RUNNING') AS running,"
            "       (SELECT count(*) FROM durable_log l JOIN runs r ON r.tenant_id = l.tenant_id"
            "        AND r.id = l.run_id WHERE r.workflow = $1 AND l.status = 'pending'"
            "        AND l.waiting_attempt IS NOT NULL) AS parked", workflow)
        assert row is not None
        held = int(row["running"]) - int(row["parked"])
        if int(row["parked"]) >= TASKS:
            return held
        await asyncio.sleep(0.05)
    return held


async def durable_part(r: Ratchet) -> dict[str, float]:
    """The durable-task part of `make bench-children` (bench/children.py PARTS)."""
    result = await _measure(r)
    return {k: float(v) for k, v in result.items() if isinstance(v, int | float)}


async def main() -> dict[str, object]:
    r = Ratchet()
    try:
        return await _measure(r)
    finally:
        await r.aclose()


async def _measure(r: Ratchet) -> dict[str, object]:
    name = f"bench-durable-{int(time.time())}"
    late_ms: list[float] = []

    @r.durable_task(name=name, execution_timeout=timedelta(minutes=10))
    async def sleeper(input: dict, ctx: DurableContext) -> dict:  # type: ignore[type-arg]
        await ctx.aio_wait_for_event(f"{name}.gate")
        asked = time.time()
        await ctx.aio_sleep_for(SLEEP_S)
        late_ms.append((time.time() - asked - SLEEP_S) * 1000)
        return {}

    worker = r.worker("durable-bench", workflows=[sleeper], slots=SLOTS)
    worker_task = asyncio.create_task(worker.astart())
    await worker.wait_connected(30)
    pg = await asyncpg.connect(os.environ["DATABASE_URL"])
    started = time.time()
    run_ids: list[str] = []
    for i in range(0, TASKS, 1000):
        body = {"runs": [{"input": {"i": k}} for k in range(i, min(TASKS, i + 1000))]}
        out = await r.arequest("POST", f"/workflows/{name}/run/bulk", json=body)
        run_ids.extend(out["run_ids"])
    held = await held_while_asleep(pg, name, time.time() + 120)
    print(f"all {TASKS} asleep at the gate; regular slots held by them: {held}", flush=True)
    await r.events.aio_push(f"{name}.gate", {})
    while len(late_ms) < TASKS and time.time() < started + 300:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    elapsed = time.time() - started
    await pg.close()
    late_ms.sort()
    result = {
        "bench": "durable",
        "tasks": TASKS,
        "slots": SLOTS,
        "sleep_s": SLEEP_S,
        "woken": len(late_ms),
        "regular_slots_held_asleep": held,
        "wake_late_p50_ms": round(pct(late_ms, 50), 1) if late_ms else None,
        "wake_late_p99_ms": round(pct(late_ms, 99), 1) if late_ms else None,
        "wake_late_max_ms": round(late_ms[-1], 1) if late_ms else None,
        "tasks_per_s": round(len(late_ms) / elapsed, 1),
    }

    async def teardown() -> None:
        await worker.astop(drain_timeout_s=5)
        worker_task.cancel()
        await asyncio.gather(worker_task, return_exceptions=True)

    try:  # bounded: the result is what matters here
        await asyncio.wait_for(teardown(), 30)
    except TimeoutError:
        print("worker shutdown did not finish within 30 s; leaving it")
    return result


def run() -> None:
    result = asyncio.run(main())
    print(json.dumps(result, indent=2))
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"durable-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    run()
