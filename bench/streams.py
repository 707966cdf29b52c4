"""Stream latency and throughput of one run: ctx.put_stream → dispatcher → JetStream → SSE → SDK.

    python -m bench.streams      # against the stack in the environment (`make up`)

One task first puts BENCH_STREAM_PACED chunks (default 500) one every BENCH_STREAM_GAP_MS
(default 2 ms, a fast LLM's token rate and then some): their put→receive latencies give p50/p99
without queueing behind each other. Then it puts BENCH_STREAM_CHUNKS chunks (default 5,000) as
fast as it can: first put → last receive gives chunks/s. The subscriber attaches before the
first measured chunk; worker, subscriber and time stamps share one process and clock. Prints
JSON with `stream_p50_ms`, `stream_p99_ms` and `stream_chunks_per_s`; `measure()` is what
bench-payloads imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from typing import Any

from ratchet import Context, Ratchet

N_CHUNKS = int(os.environ.get("BENCH_STREAM_CHUNKS", "5000"))
N_PACED = int(os.environ.get("BENCH_STREAM_PACED", "500"))
GAP_MS = float(os.environ.get("BENCH_STREAM_GAP_MS", "2"))
READY = "ready"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


async def measure(
    r: Ratchet, chunks: int = N_CHUNKS, paced: int = N_PACED, gap_ms: float = GAP_MS,
    timeout_s: float = 300.0,
) -> dict[str, float]:
    """Run one streaming run on an in-process worker; latency percentiles and chunks/s."""
    wf = r.workflow(f"bench-stream-{uuid.uuid4().hex[:8]}")
    subscribed = asyncio.Event()

    @wf.task(execution_timeout=timeout_s)
    async def produce(input: dict[str, Any], ctx: Context) -> dict[str, int]:
        await ctx.aio_put_stream(READY)
        await asyncio.wait_for(subscribed.wait(), timeout_s)
        for _ in range(int(input["paced"])):
            await ctx.aio_put_stream({"paced": True, "put": time.time()})
            await asyncio.sleep(float(input["gap_ms"]) / 1000)
        for i in range(int(input["chunks"])):
            await ctx.aio_put_stream({"i": i, "put": time.time()})
        return {"chunks": int(input["chunks"])}

    worker = r.worker(f"bench-stream-{uuid.uuid4().hex[:6]}", workflows=[wf], slots=1)
    runner = asyncio.create_task(worker.astart())
    latencies_ms: list[float] = []
    first_put = last_seen = 0.0
    received = 0
    try:
        await worker.wait_connected(30)
        ref = await wf.aio_run_no_wait({"chunks": chunks, "paced": paced, "gap_ms": gap_ms})
        async with asyncio.timeout(timeout_s):
            async for chunk in r.runs.aio_stream(ref.run_id):
                now = time.time()
                if chunk == READY:
                    subscribed.set()
                    continue
                if chunk.get("paced"):
                    latencies_ms.append((now - chunk["put"]) * 1000)
                    continue
                if not first_put:
                    first_put = chunk["put"]
                received += 1
                last_seen = now
        await ref.aio_result(timeout_s)
    finally:
        await worker.astop(drain_timeout_s=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner, 10)
    if received != chunks or len(latencies_ms) != paced:
        raise RuntimeError(f"received {received} of {chunks} and {len(latencies_ms)} of {paced}")
    elapsed = max(last_seen - first_put, 1e-9)
    return {
        "stream_chunks": chunks,
        "stream_paced_chunks": paced,
        "stream_p50_ms": round(pct(latencies_ms, 50), 2),
        "stream_p99_ms": round(pct(latencies_ms, 99), 2),
        "stream_chunks_per_s": round(chunks / elapsed, 1),
    }


async def main() -> dict[str, float]:
    r = Ratchet()
    try:
        return await measure(r)
    finally:
        await r.aclose()
        r.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
