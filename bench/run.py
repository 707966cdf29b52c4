"""`make bench`: N no-op single-task runs end to end through the local stack.

Triggers go through the REST bulk endpoint; an in-process SDK worker runs the tasks. The
task reads its trigger time from its input (trigger→start); trigger→result uses the run's
finished_at as recorded by the scheduler (same machine clock).

`make bench-ts` (BENCH_WORKER=ts): the same, with the TypeScript SDK's worker in a node
process (bench/ts_noop_worker.mjs) instead, so the two figures compare worker against worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from ratchet import Context, Ratchet

from bench import runs

N_TASKS = int(os.environ.get("BENCH_TASKS", "5000"))
BATCH = int(os.environ.get("BENCH_BATCH", "500"))
SLOTS = int(os.environ.get("BENCH_SLOTS", "1000"))
WORKER = os.environ.get("BENCH_WORKER", "py")  # py | ts
TS_WORKER = Path(__file__).with_name("ts_noop_worker.mjs")


class TsWorker:
    """The TypeScript no-op worker as a subprocess: ready once connected; stop() returns the
    trigger→start latencies it saw (ms)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node", str(TS_WORKER), self.name, str(SLOTS), stdout=asyncio.subprocess.PIPE
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the TypeScript worker did not start: {line!r}")

    async def stop(self) -> list[float]:
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.terminate()
        out = await asyncio.wait_for(self.proc.stdout.read(), 60)
        await self.proc.wait()
        return [float(x) for x in json.loads(out.decode().strip().splitlines()[-1])]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def main() -> dict[str, Any]:
    r = Ratchet()
    starts: dict[int, float] = {}
    triggered: dict[str, float] = {}
    name = f"bench-noop-{int(time.time())}"
    noop_wf = r.workflow(name)

    @noop_wf.task()
    async def noop(input: dict[str, float], ctx: Context) -> dict[str, int]:
        starts[int(input["i"])] = time.time() - input["t"]
        return {"ok": 1}

    ts = TsWorker(name) if WORKER == "ts" else None
    if ts is not None:
        await ts.start()  # registers the workflow
        out = await r.arequest("POST", f"/workflows/{name}/run/bulk",
                               json={"runs": [{"input": {"i": -1, "t": time.time()}}]})
        warm = (await r.runs.aio_get(out["run_ids"][0], wait_s=30))["output"]
    else:
        worker = r.worker("bench-worker", workflows=[noop_wf], slots=SLOTS)
        worker_task = asyncio.create_task(worker.astart())
        await worker.wait_connected(30)
        warm = await noop_wf.aio_run({"i": -1, "t": time.time()}, timeout_s=30)
    assert warm == {"noop": {"ok": 1}}
    starts.clear()

    t0 = time.time()
    i = 0
    while i < N_TASKS:
        n = min(BATCH, N_TASKS - i)
        now = time.time()
        body = {"runs": [{"input": {"i": i + k, "t": now}} for k in range(n)]}
        out = await r.arequest("POST", f"/workflows/{name}/run/bulk", json=body)
        for run_id in out["run_ids"]:
            triggered[run_id] = now
        i += n
    trigger_done = time.time()

    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=2)
    deadline = time.time() + 600
    while True:
        done = await runs.finished(pool, triggered, t0)
        if len(done) >= len(triggered) or time.time() > deadline:
            break
        await asyncio.sleep(0.5)  # throughput uses finished_at, not when this poll sees it
    await pool.close()
    result_lat = [(at.timestamp() - triggered[run_id]) * 1000 for run_id, at in done.items()]
    last_finish = max(at.timestamp() for at in done.values())
    elapsed = last_finish - t0
    if ts is not None:
        start_lat = await ts.stop()
    else:
        start_lat = [v * 1000 for v in starts.values()]
        await worker.astop()
        await asyncio.wait_for(worker_task, 30)
    await r.aclose()
    stats = {
        "worker": "python" if WORKER == "py" else "typescript",
        "tasks": float(len(done)),
        "requested": float(N_TASKS),
        "elapsed_s": round(elapsed, 3),
        "trigger_s": round(trigger_done - t0, 3),
        "tasks_per_s": round(len(done) / elapsed, 1),
        "start_p50_ms": round(pct(start_lat, 50), 2),
        "start_p95_ms": round(pct(start_lat, 95), 2),
        "start_p99_ms": round(pct(start_lat, 99), 2),
        "result_p50_ms": round(pct(result_lat, 50), 2),
        "result_p95_ms": round(pct(result_lat, 95), 2),
        "result_p99_ms": round(pct(result_lat, 99), 2),
    }
    return stats


def run() -> None:
    stats = asyncio.run(main())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kind = "" if WORKER == "py" else f"{WORKER}-"
    out = Path("bench/results") / f"bench-{kind}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=2) + "\n")
    sdk = "Python" if WORKER == "py" else "TypeScript"
    print(f"ratchet bench: {int(stats['tasks'])} no-op single-task runs, {sdk} SDK worker")
    print(f"  throughput      {stats['tasks_per_s']:.0f} tasks/s ({stats['elapsed_s']} s)")
    print(
        f"  trigger->start  p50 {stats['start_p50_ms']} ms  p95 {stats['start_p95_ms']} ms"
        f"  p99 {stats['start_p99_ms']} ms"
    )
    print(
        f"  trigger->result p50 {stats['result_p50_ms']} ms  p95 {stats['result_p95_ms']} ms"
        f"  p99 {stats['result_p99_ms']} ms"
    )
    print(f"  wrote {out}")


if __name__ == "__main__":
    run()
