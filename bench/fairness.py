"""`make bench-fairness`: one group floods, three trickle; are they served fairly?

Four groups share one workflow whose task has a GROUP_ROUND_ROBIN concurrency key on
`input.g` and takes one unit of a shared rate limit. Group "flood" submits FLOOD_TASKS at
once; groups t1..t3 each submit TRICKLE_RATE tasks per second for DURATION_S. Printed per
group: throughput share, p50/p95 wait (trigger → start, measured in the task), Jain's
fairness index over the active groups (allocations normalized by their max-min fair share:
a trickle group fairly gets all it asks for, the flood the rest), and the observed peak
rate of the rate-limit key (any 1 s window, from the scheduler's admission log) vs its limit.
It runs in a tenant of its own; the flood runs still queued at the end are cancelled
(bench/cleanup.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from ratchet import Concurrency, Context, Ratchet, RateLimit

from bench.cleanup import bench_tenant, cancel_leftovers
from bench.run import pct
from libs.common import db, jetstream
from libs.common.settings import load_settings

FLOOD_TASKS = int(os.environ.get("FAIR_FLOOD", "10000"))
TRICKLE_RATE = float(os.environ.get("FAIR_TRICKLE_RATE", "10"))
DURATION_S = float(os.environ.get("FAIR_DURATION_S", "30"))
SLOTS = int(os.environ.get("FAIR_SLOTS", "20"))
LIMIT_PER_S = int(os.environ.get("FAIR_LIMIT", "150"))
TASK_S = float(os.environ.get("FAIR_TASK_S", "0.05"))
TRICKLE = ["t1", "t2", "t3"]


def jain(values: list[float]) -> float:
    if not values or not any(values):
        return 0.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def max_min_fair(demands: dict[str, float], capacity: float) -> dict[str, float]:
    """Water-filling: small demands are met in full, the rest split what remains."""
    fair: dict[str, float] = {}
    left, groups = capacity, sorted(demands, key=lambda g: demands[g])
    while groups:
        share = left / len(groups)
        g = groups[0]
        if demands[g] <= share:
            fair[g] = demands[g]
            left -= demands[g]
            groups.pop(0)
        else:
            for g in groups:
                fair[g] = share
            break
    return fair


async def main() -> dict[str, object]:
    settings = load_settings()
    pool = await db.create_pool(settings.database_url, max_size=2)
    nc = await jetstream.connect(settings, "bench-fairness")
    tenant, token = await bench_tenant(pool, "bench-fair")
    progress = Progress()
    try:
        return await _measure(Ratchet(token=token), progress)
    finally:
        # The flood is far from served when the measurement ends: cancel what is left queued
        # rather than leave it to time out later under someone else's bench.
        left = await cancel_leftovers(pool, nc.jetstream(), tenant,
                                      expected_runs=progress.triggered)
        print(f"cleanup: cancelled {left} runs of {tenant}")
        await nc.drain()
        await pool.close()


@dataclass
class Progress:
    triggered: int = 0  # runs accepted by the API so far


async def _measure(r: Ratchet, progress: Progress) -> dict[str, object]:
    stamp = int(time.time())
    key = f"fair-llm-{stamp}"
    await r.rate_limits.aio_put(key, limit=LIMIT_PER_S, per="second")
    wf = r.workflow(f"bench-fair-{stamp}")
    starts: dict[str, list[tuple[float, float]]] = defaultdict(list)  # g -> (start, wait)
    sent = {g: 0 for g in TRICKLE}
    sending = asyncio.Event()
    trickle_done = asyncio.Event()  # every trickle task sent has started

    @wf.task(concurrency=Concurrency(key="input.g", max_runs=SLOTS),
             rate_limits=[RateLimit(key=key, units=1)], execution_timeout=60, schedule_timeout=600)
    async def call(input: dict[str, object], ctx: Context) -> dict[str, int]:
        now = time.time()
        starts[str(input["g"])].append((now, now - float(input["t"])))  # type: ignore[arg-type]
        if sending.is_set() and all(len(starts[g]) >= sent[g] for g in TRICKLE):
            trickle_done.set()
        await asyncio.sleep(TASK_S)
        return {"ok": 1}

    worker = r.worker("fair-worker", workflows=[wf], slots=SLOTS)
    worker_task = asyncio.create_task(worker.astart())
    await worker.wait_connected(30)
    progress.triggered += 1
    await wf.aio_run({"g": "warm", "t": time.time()}, timeout_s=60)
    starts.clear()

    t0 = time.time()
    for i in range(0, FLOOD_TASKS, 1000):
        body = {"runs": [{"input": {"g": "flood", "t": time.time()}}
                         for _ in range(min(1000, FLOOD_TASKS - i))]}
        await r.arequest("POST", f"/workflows/{wf.name}/run/bulk", json=body)
        progress.triggered += len(body["runs"])
    tick = 1.0 / TRICKLE_RATE
    nxt = time.time()
    while time.time() - t0 < DURATION_S:
        body = {"runs": [{"input": {"g": g, "t": time.time()}} for g in TRICKLE]}
        await r.arequest("POST", f"/workflows/{wf.name}/run/bulk", json=body)
        progress.triggered += len(body["runs"])
        for g in TRICKLE:
            sent[g] += 1
        nxt += tick
        await asyncio.sleep(max(0.0, nxt - time.time()))
    t_end = time.time()
    # let the trickle tasks sent last finish, then measure within [t0, t_end]
    sending.set()
    if all(len(starts[g]) >= sent[g] for g in TRICKLE):
        trickle_done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(trickle_done.wait(), 60)

    served = {g: sum(1 for s, _ in starts[g] if t0 <= s <= t_end) for g in ["flood", *TRICKLE]}
    total = sum(served.values())
    demands = {"flood": float(FLOOD_TASKS), **{g: float(sent[g]) for g in TRICKLE}}
    fair = max_min_fair(demands, float(total))
    alloc = [min(1.0, served[g] / fair[g]) if fair[g] else 1.0 for g in served]
    index = jain(alloc)
    waits = {g: [w * 1000 for _, w in starts[g]] for g in served}
    trickle_waits = [w for g in TRICKLE for w in waits[g]]
    # p95 wait of the trickle tasks sent in each second: shows whether a high p95 is a
    # steady cost or one stall (say, while the scheduler takes in the flood's 10k runs)
    by_second: dict[int, list[float]] = defaultdict(list)
    for g in TRICKLE:
        for start, wait in starts[g]:
            by_second[int(start - wait - t0)].append(wait * 1000)
    timeline = [round(pct(by_second[s], 95), 1) for s in range(int(DURATION_S) + 1) if by_second[s]]
    # the second half of the run: the flood's runs are long taken in, the limit saturated
    steady = [w for s in range(int(DURATION_S) // 2, int(DURATION_S) + 1) for w in by_second[s]]

    conn = await asyncpg.connect(os.environ["DATABASE_URL"])
    try:
        rows = await conn.fetch(
            "SELECT ts FROM rate_limit_admissions WHERE key = $1 ORDER BY ts", key
        )
    finally:
        await conn.close()
    ts = [row["ts"].timestamp() for row in rows]
    peak, lo = 0, 0
    for hi in range(len(ts)):
        while ts[hi] - ts[lo] >= 1.0:
            lo += 1
        peak = max(peak, hi - lo + 1)

    print(f"{'group':8} {'served':>7} {'share':>7} {'p50 wait ms':>12} {'p95 wait ms':>12}")
    for g in served:
        print(f"{g:8} {served[g]:7d} {served[g] / max(total, 1):7.1%} "
              f"{pct(waits[g], 50):12.1f} {pct(waits[g], 95):12.1f}")
    print(f"trickle p95 wait per second sent (ms): {timeline}")
    print(f"trickle p95 wait in the second half (ms): {pct(steady, 95):.1f}")
    print(f"Jain's index over active groups: {index:.3f} (goal >= 0.95)")
    print(f"rate limit {key}: peak {peak} starts in a 1 s window, limit {LIMIT_PER_S}"
          f" ({peak / LIMIT_PER_S:.2f} of the limit)")
    result: dict[str, object] = {
        "jain_index": index,
        "flood_share": served["flood"] / max(total, 1),
        "trickle_p50_wait_ms": pct(trickle_waits, 50),
        "trickle_p95_wait_ms": pct(trickle_waits, 95),
        "max_rate_over_limit": peak / LIMIT_PER_S,
        "trickle_p95_wait_ms_by_second": timeline,
        "trickle_p95_wait_ms_second_half": pct(steady, 95),
        "rate_limit_peak_per_s": peak,
        "rate_limit": LIMIT_PER_S,
        "served": served,
        "sent": {"flood": FLOOD_TASKS, **sent},
        "duration_s": t_end - t0,
        "slots": SLOTS,
    }
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"fairness-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    # Thousands of flood runs are still queued when the measurement ends, and the worker's
    # shutdown has been seen to hang on them: bound it rather than wait forever.
    async def teardown() -> None:
        await worker.astop(drain_timeout_s=5)
        worker_task.cancel()
        await asyncio.gather(worker_task, return_exceptions=True)
        await r.aclose()

    try:
        await asyncio.wait_for(teardown(), 30)
    except TimeoutError:
        print("worker shutdown did not finish within 30 s; leaving it")
    return result


if __name__ == "__main__":
    asyncio.run(main())
