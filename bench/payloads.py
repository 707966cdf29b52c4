"""`make bench-payloads`: large payloads through the local stack of `make up`.

- 1 MiB in + 1 MiB out: BENCH_PAYLOAD_RUNS single-task runs (default 200) whose input is a
  1 MiB string the task echoes back, so both travel through the payload store (above the
  128 KiB inline limit). Triggered in bulk requests of 8 runs; tasks/s and trigger→result
  p50/p99 (the scheduler's finished_at, same clock).
- 16 KiB in + 16 KiB out: the same, inline all the way (the baseline to compare with).
- One ~63 MiB round trip (the largest JSON under the 64 MiB limit): peak RSS of the stack's
  dispatcher (from `$RATCHET_RUN_DIR/pids/dispatcher.pid`) and of the worker, which runs in a
  child process of its own so its memory is not ours; both sampled every 10 ms from /proc.
  Their RSS just before the round trip: `idle_rss_worker_mb`, `idle_rss_dispatcher_mb`.
- Streams: `bench.streams.measure` (put→subscriber p50/p99 and chunks/s of one run).

The worker is `python -m bench.payloads worker <workflow> <slots>` (same definition).
`python -m bench.payloads big` runs only the ~63 MiB round trip (seconds instead of minutes)
and writes `payloads-big-<stamp>.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from ratchet import Context, Ratchet, Workflow

from bench import streams
from bench.run import pct

MiB = 1024 * 1024
N_RUNS = int(os.environ.get("BENCH_PAYLOAD_RUNS", "200"))
BULK = 8
SLOTS = 16
TENANT = os.environ.get("RATCHET_TENANT", "dev")  # the token's tenant (.run/env)
BIG_BYTES = 63 * MiB
RUN_DIR = Path(os.environ.get("RATCHET_RUN_DIR") or ".run")


def define(r: Ratchet, name: str) -> Workflow:
    wf = r.workflow(name)

    @wf.task()
    async def echo(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"text": input["text"]}

    return wf


def worker_main(name: str, slots: int) -> None:
    r = Ratchet()
    r.worker("bench-payloads", workflows=[define(r, name)], slots=slots).start()


class RssSampler:
    """Peak resident set size (MiB) of some processes, sampled from /proc in a thread."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.01) -> None:
        self.pids = pids
        self.peak_mb = dict.fromkeys(pids, 0.0)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                self.peak_mb[name] = max(self.peak_mb[name], _rss_mb(pid))
            self._stop.wait(self._interval_s)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def _batch(r: Ratchet, pool: asyncpg.Pool, name: str, size: int, n: int) -> dict[str, float]:
    """n runs of a `size`-character input echoed back: throughput and trigger→result."""
    text = "p" * size
    triggered: dict[str, float] = {}
    t0 = time.time()
    for i in range(0, n, BULK):
        now = time.time()
        body = {"runs": [{"input": {"text": text}} for _ in range(min(BULK, n - i))]}
        out = await r.arequest("POST", f"/workflows/{name}/run/bulk", json=body)
        triggered.update(dict.fromkeys(out["run_ids"], now))
    ids = list(triggered)
    deadline = time.time() + 600
    while time.time() < deadline:
        done = await pool.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = $2 AND id = ANY($1) AND status IN "
            "('SUCCEEDED', 'FAILED', 'CANCELLED')", ids, TENANT)
        if done >= len(ids):
            break
        await asyncio.sleep(0.2)  # figures come from finished_at, not from this poll
    rows = await pool.fetch(
        "SELECT id, finished_at FROM runs WHERE tenant_id = $2 AND id = ANY($1)"
        " AND status = 'SUCCEEDED'", ids, TENANT)
    if not rows:
        raise RuntimeError(f"none of the {n} runs of {size} bytes succeeded")
    lat = [(row["finished_at"].timestamp() - triggered[row["id"]]) * 1000 for row in rows]
    elapsed = max(row["finished_at"].timestamp() for row in rows) - t0
    return {
        "runs": float(len(rows)), "tasks_per_s": round(len(rows) / elapsed, 1),
        "result_p50_ms": round(pct(lat, 50), 1), "result_p99_ms": round(pct(lat, 99), 1),
    }


async def _big_round_trip(r: Ratchet, wf: Workflow, worker_pid: int) -> dict[str, float]:
    pids = {"worker": worker_pid}
    pid_file = RUN_DIR / "pids" / "dispatcher.pid"
    if pid_file.exists():
        pids["dispatcher"] = int(pid_file.read_text().split()[0])
    text = "b" * (BIG_BYTES - 64)
    # What the peaks are above: the worker may hold ~2 payloads at once (issue 11).
    idle_mb = {name: _rss_mb(pid) for name, pid in pids.items()}
    with RssSampler(pids) as rss:
        t0 = time.time()
        out = await wf.aio_run({"text": text}, timeout_s=300)
        elapsed = time.time() - t0
    assert len(out["echo"]["text"]) == len(text)
    return {
        "big_round_trip_s": round(elapsed, 2),
        "peak_rss_dispatcher_mb": round(rss.peak_mb.get("dispatcher", 0.0), 1),
        "peak_rss_worker_mb": round(rss.peak_mb["worker"], 1),
        "idle_rss_dispatcher_mb": round(idle_mb.get("dispatcher", 0.0), 1),
        "idle_rss_worker_mb": round(idle_mb["worker"], 1),
    }


async def _start_worker(name: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.payloads", "worker", name, str(SLOTS))


async def big_only() -> dict[str, Any]:
    """Only the ~63 MiB round trip, after one small run that warms the worker up."""
    r = Ratchet()
    name = f"bench-payloads-big-{int(time.time())}"
    wf = define(r, name)
    worker = await _start_worker(name)
    try:
        await wf.aio_run({"text": "warm"}, timeout_s=60)
        big = await _big_round_trip(r, wf, worker.pid)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)
        await r.aclose()
    return {**big, "big_payload_bytes": BIG_BYTES}


async def main() -> dict[str, Any]:
    r = Ratchet()
    name = f"bench-payloads-{int(time.time())}"
    wf = define(r, name)
    worker = await _start_worker(name)
    pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=2)
    try:
        await wf.aio_run({"text": "warm"}, timeout_s=60)
        mib = await _batch(r, pool, name, MiB, N_RUNS)
        inline = await _batch(r, pool, name, 16 * 1024, N_RUNS)
        big = await _big_round_trip(r, wf, worker.pid)
        streamed = await streams.measure(r)
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 30)
        await pool.close()
        await r.aclose()
    peak = max(big["peak_rss_dispatcher_mb"], big["peak_rss_worker_mb"])
    return {
        "mib_tasks_per_s": mib["tasks_per_s"], "mib_result_p50_ms": mib["result_p50_ms"],
        "mib_result_p99_ms": mib["result_p99_ms"], "mib_runs": mib["runs"],
        "inline_tasks_per_s": inline["tasks_per_s"],
        "inline_result_p50_ms": inline["result_p50_ms"],
        "inline_result_p99_ms": inline["result_p99_ms"], "inline_runs": inline["runs"],
        **big, "peak_rss_mb": peak, "big_payload_bytes": BIG_BYTES,
        **{k: v for k, v in streamed.items() if k.startswith("stream")},
    }


def run(big: bool = False) -> None:
    stats: dict[str, Any] = asyncio.run(big_only() if big else main())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path("bench/results") / f"payloads-{'big-' if big else ''}{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        worker_main(sys.argv[2], int(sys.argv[3]))
    else:
        run(big=sys.argv[1:] == ["big"])
