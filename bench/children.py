"""`make bench-children`: child runs (and durable tasks) against the local stack.

Fan-out: one task starts BENCH_CHILDREN (10,000) no-op child runs with one `aio_run_many`
and awaits every result the way user code would (`asyncio.gather` over `ref.aio_result()`).
Measured: seconds from the parent's trigger to its last child's result, and children/s.

Each part of the bench is a coroutine returning its figures; they are merged into one JSON
file, bench/results/children-<ts>.json (at least `children_per_s`; the durable-task part adds
`wake_late_p50_ms` and `wake_late_p99_ms`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ratchet import Context, Ratchet, RunRef

from bench.durable import durable_part

N_CHILDREN = int(os.environ.get("BENCH_CHILDREN", "10000"))
SLOTS = int(os.environ.get("BENCH_SLOTS", "200"))
# Results awaited at once by the parent: every one is a long-poll HTTP request.
GATHER_WIDTH = int(os.environ.get("BENCH_GATHER", "200"))


async def _gather(refs: list[RunRef], width: int) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(width)

    async def one(ref: RunRef) -> dict[str, Any]:
        async with gate:
            return await ref.aio_result(600)

    return await asyncio.gather(*(one(ref) for ref in refs))


async def fan_out(r: Ratchet) -> dict[str, float]:
    stamp = int(time.time())
    child_wf = r.workflow(f"bench-child-{stamp}")
    parent_wf = r.workflow(f"bench-fan-out-{stamp}")
    spawned_s: list[float] = []

    @child_wf.task()
    async def child(input: dict[str, int], ctx: Context) -> dict[str, int]:
        return {"i": input["i"]}

    @parent_wf.task(execution_timeout=3600)
    async def parent(input: dict[str, int], ctx: Context) -> dict[str, int]:
        t0 = time.monotonic()
        refs = await child_wf.aio_run_many([{"i": i} for i in range(input["n"])])
        spawned_s.append(time.monotonic() - t0)
        outs = await _gather(refs, GATHER_WIDTH)
        return {"n": len(outs), "sum": sum(o["child"]["i"] for o in outs)}

    worker = r.worker("bench-children", workflows=[parent_wf, child_wf], slots=SLOTS)
    worker_task = asyncio.create_task(worker.astart())
    try:
        await worker.wait_connected(30)
        await parent_wf.aio_run({"n": 10}, timeout_s=120)  # warm-up: registration, connections
        spawned_s.clear()
        t0 = time.monotonic()
        ref = await parent_wf.aio_run_no_wait({"n": N_CHILDREN})
        out = (await ref.aio_result(3600))["parent"]
        elapsed = time.monotonic() - t0
    finally:
        await worker.astop()
        await asyncio.wait_for(worker_task, 30)
    assert out == {"n": N_CHILDREN, "sum": N_CHILDREN * (N_CHILDREN - 1) // 2}, out
    view = await r.runs.aio_get(ref.run_id)
    assert view["children_count"] == N_CHILDREN, view["children_count"]
    return {
        "children": float(N_CHILDREN),
        "fan_out_s": round(elapsed, 3),
        "spawn_s": round(spawned_s[0], 3) if spawned_s else float("nan"),
        "children_per_s": round(N_CHILDREN / elapsed, 1),
    }


# The parts of the bench, in order; each adds its figures to the JSON.
PARTS: list[tuple[str, Callable[[Ratchet], Awaitable[dict[str, float]]]]] = [
    ("fan-out", fan_out),
    ("durable", durable_part),  # 1,000 durable 1 s sleeps on 10 slots (bench/durable.py)
]


async def main() -> dict[str, float]:
    r = Ratchet()
    stats: dict[str, float] = {}
    try:
        for _name, part in PARTS:
            stats.update(await part(r))
    finally:
        await r.aclose()
    return stats


def run() -> None:
    stats = asyncio.run(main())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path("bench/results") / f"children-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=2) + "\n")
    print(f"ratchet bench-children: one task fans out {int(stats['children'])} child runs")
    print(f"  spawn (aio_run_many)   {stats['spawn_s']} s")
    print(f"  trigger -> last result {stats['fan_out_s']} s ({stats['children_per_s']:.0f} children/s)")
    if "wake_late_p50_ms" in stats:
        print(f"  durable: {int(stats['tasks'])} sleepers on {int(stats['slots'])} slots, "
              f"slots held asleep {int(stats['regular_slots_held_asleep'])}, wake-up lateness "
              f"p50 {stats['wake_late_p50_ms']} ms, p99 {stats['wake_late_p99_ms']} ms")
    print(f"  wrote {out}")


if __name__ == "__main__":
    run()
