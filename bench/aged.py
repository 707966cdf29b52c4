"""`make bench-aged`: workload (c) on a stack with a long history, and during a timeout storm.

1. History: tops the history tenant up to BENCH_AGED_RUNS finished runs (default 1,000,000),
   bulk-loaded into PostgreSQL and the OLAP store (bench/aged_history.py: the rows the engine
   and the replicator write). In embedded OLAP mode the stack's replicator owns the chDB
   directory, so it is stopped for the load and started again with `tools.devstack up`.
2. Workload (c) on Ratchet — a steady COMPARE_RATE (100) no-op tasks/s for COMPARE_LATENCY_S
   (15) s, trigger→start — with the CPU every stack process (and this one, with its worker)
   spent, per task; then the same on Celery (bench/compare.py's two sides, unchanged).
3. The storm: BENCH_AGED_STORM (50,000) runs of another tenant, of a workflow no worker
   serves, with a BENCH_AGED_STORM_TIMEOUT_S (60) s schedule timeout; once all are queued the
   bench waits until the first timeouts come due and measures workload (c) again, while they
   time out. They all end TIMED_OUT; anything still active afterwards is cancelled.

The machine is shared: run it on a quiet one for numbers to compare, and read `loadavg` in
the result. Writes bench/results/aged-<ts>.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from bench import aged_history, compare, cpu
from bench.cleanup import bench_tenant, cancel_leftovers
from libs.common import db, jetstream, olap, subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import TriggerRun, TriggerRuns, encode
from libs.common.olap import OlapBackend
from libs.common.settings import Settings, load_settings
from libs.common.specs import TaskSpec, WorkflowSpec, content_hash
from tools import devstack

N_HISTORY = int(os.environ.get("BENCH_AGED_RUNS", "1000000"))
HISTORY_DAYS = float(os.environ.get("BENCH_AGED_DAYS", "7"))
STORM = int(os.environ.get("BENCH_AGED_STORM", "50000"))
STORM_TIMEOUT_S = float(os.environ.get("BENCH_AGED_STORM_TIMEOUT_S", "60"))
STORM_CHUNK = 1000
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ history


@contextlib.asynccontextmanager
async def olap_for_loading(settings: Settings) -> Any:
    """The OLAP backend to load into: the server when configured, else the stack's chDB
    directory with the replicator stopped (restarted afterwards)."""
    if settings.clickhouse_url:
        backend: OlapBackend = olap.ClickHouseBackend.from_url(settings.clickhouse_url)
        try:
            yield backend
        finally:
            await backend.close()
        return
    run_dir = Path(os.environ.get("RATCHET_RUN_DIR") or ROOT / ".run")
    pid = devstack.read_pid_file(run_dir / "pids" / "replicator.pid")
    stopped = pid is not None and devstack.pid_alive(pid)
    if stopped:
        assert pid is not None
        devstack.terminate_pid(pid)
    try:
        backend = olap.ChdbBackend(olap.chdb_path(settings))
        await olap.ensure_schema(backend)
        try:
            yield backend
        finally:
            await backend.close()
    finally:
        if stopped:
            await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "tools.devstack", "up"], check=False,
                cwd=ROOT, stdout=subprocess.DEVNULL,
            )


# ------------------------------------------------------------------------------ storm


async def start_storm(pool: asyncpg.Pool, js: Any) -> tuple[str, float, float]:
    """Queue STORM runs nobody serves; returns (tenant, first, last queued time, epoch s)."""
    tenant, _token = await bench_tenant(pool, "bench-aged-storm")
    spec = WorkflowSpec(name="storm", tasks=[TaskSpec(name="t", schedule_timeout_s=STORM_TIMEOUT_S)])
    version = f"wv_{tenant}_storm"
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO workflow_versions (id, tenant_id, name, hash, spec)"
            " VALUES ($1, $2, 'storm', $3, $4::jsonb)",
            version, tenant, content_hash(spec), msgspec.json.encode(spec).decode(),
        )
        await conn.execute(
            "INSERT INTO workflows (tenant_id, name, current_version_id) VALUES ($1, 'storm', $2)",
            tenant, version,
        )
    # Straight to the CMD stream, as the API would publish a bulk trigger, without its cost.
    batch = [
        Outgoing(subjects.cmd(tenant, "run.trigger"), encode(TriggerRuns(runs=[
            TriggerRun(run_id=uuid.uuid4().hex, workflow="storm", version_id=version,
                       input=b"{}", source="api")
            for _ in range(min(STORM_CHUNK, STORM - i))
        ])), f"aged-storm:{tenant}:{i}")
        for i in range(0, STORM, STORM_CHUNK)
    ]
    await jetstream.publish_batch(js, batch, timeout_s=60)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        row = await pool.fetchrow(
            "SELECT count(*) AS n, min(created_at) AS first, max(created_at) AS last FROM runs"
            " WHERE tenant_id = $1", tenant,
        )
        if row["n"] >= STORM:
            return tenant, row["first"].timestamp(), row["last"].timestamp()
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the storm's {STORM} runs were not all queued in time")


async def end_storm(pool: asyncpg.Pool, js: Any, tenant: str) -> dict[str, float]:
    """Wait for the storm to time out (bounded), cancel what is left; count the outcomes."""
    deadline = time.monotonic() + STORM_TIMEOUT_S + 300
    while time.monotonic() < deadline:
        active = await pool.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = $1 AND status IN ('PENDING', 'RUNNING')",
            tenant,
        )
        if active == 0:
            break
        await asyncio.sleep(1.0)
    cancelled = await cancel_leftovers(pool, js, tenant, expected_runs=STORM)
    timed_out = await pool.fetchval(
        "SELECT count(*) FROM tasks WHERE tenant_id = $1 AND status = 'TIMED_OUT'", tenant
    )
    # How long the scheduler took to time them all out: the part of the measurement that
    # had a storm going on (it starts half a second before the first one is due).
    span = await pool.fetchrow(
        "SELECT min(finished_at) AS first, max(finished_at) AS last FROM tasks"
        " WHERE tenant_id = $1 AND status = 'TIMED_OUT'", tenant,
    )
    fired_s = (span["last"] - span["first"]).total_seconds() if span["first"] else 0.0
    return {"storm_timed_out": float(timed_out), "storm_cancelled_after": float(cancelled),
            "storm_fired_s": round(fired_s, 2)}


# ------------------------------------------------------------------------------ measurement


def _cpu_total(pids: dict[str, int]) -> float:
    return sum(cpu.snapshot(pids, os.getpid()).values())


async def measure() -> dict[str, Any]:
    settings = load_settings()
    await db.migrate(settings.database_url)
    pool = await db.create_pool(settings.database_url, max_size=4)
    nc = await jetstream.connect(settings, "bench-aged")
    js = nc.jetstream()
    out: dict[str, Any] = {}
    try:
        async with olap_for_loading(settings) as backend:
            out.update(await aged_history.load(pool, backend, N_HISTORY, HISTORY_DAYS))
        side = compare.RatchetSide()
        pids = cpu.stack_pids()
        async with side.session() as ours, contextlib.AsyncExitStack() as stack:
            theirs = stack.enter_context(compare.CelerySide.session())
            out["settle_s"] = await side.quiesce()
            print(f"bench-aged: (c) on ratchet over {out['history_runs']:,.0f} runs"
                  f" (load {os.getloadavg()[0]:.2f})", flush=True)
            cpu0 = _cpu_total(pids)
            fresh = await ours["latency"]()
            cpu_s = _cpu_total(pids) - cpu0
            out["ratchet"] = fresh
            out["cpu_us_per_task_at_100"] = round(cpu_s / fresh["tasks"] * 1e6, 1)
            await side.quiesce()
            print(f"bench-aged: (c) on celery (load {os.getloadavg()[0]:.2f})", flush=True)
            out["celery"] = await asyncio.to_thread(theirs["latency"])

            print(f"bench-aged: queueing a storm of {STORM:,} schedule timeouts", flush=True)
            tenant, first, last = await start_storm(pool, js)
            await side.quiesce()
            await asyncio.sleep(max(0.0, first + STORM_TIMEOUT_S - 0.5 - time.time()))
            print(f"bench-aged: (c) on ratchet during the storm (load {os.getloadavg()[0]:.2f})",
                  flush=True)
            out["storm"] = {**await ours["latency"](), "due_window_s": round(last - first, 2)}
            out["storm"].update(await end_storm(pool, js, tenant))
    finally:
        await nc.drain()
        await pool.close()
    return out


def report(out: dict[str, Any]) -> dict[str, Any]:
    r, c, s = out["ratchet"], out["celery"], out["storm"]
    return {
        "history_runs": int(out["history_runs"]),
        "start_p50_ms": r["start_p50_ms"],
        "start_p99_ms": r["start_p99_ms"],
        "storm_start_p50_ms": s["start_p50_ms"],
        "storm_start_p99_ms": s["start_p99_ms"],
        "celery_start_p50_ms": c["start_p50_ms"],
        "celery_start_p99_ms": c["start_p99_ms"],
        "cpu_us_per_task_at_100": out["cpu_us_per_task_at_100"],
        "storm_runs": STORM,
        "details": out,
        "config": {"rate_per_s": compare.RATE_PER_S, "latency_s": compare.LATENCY_S,
                   "history_days": HISTORY_DAYS, "storm_timeout_s": STORM_TIMEOUT_S},
    }


def main() -> None:
    before = compare.machine()
    result = report(asyncio.run(measure()))
    result["machine"] = {"before": before, "after": compare.machine()}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    compare.RESULTS.mkdir(parents=True, exist_ok=True)
    path = compare.RESULTS / f"aged-{stamp}.json"
    path.write_text(json.dumps(compare.without_nan(result), indent=2, allow_nan=False) + "\n")
    print(f"history {result['history_runs']:,} runs: trigger->start p50 {result['start_p50_ms']} ms,"
          f" p99 {result['start_p99_ms']} ms (celery p50 {result['celery_start_p50_ms']} ms);"
          f" during the storm p50 {result['storm_start_p50_ms']} ms,"
          f" p99 {result['storm_start_p99_ms']} ms; cpu {result['cpu_us_per_task_at_100']} us/task")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
