"""Where should task logs live? Write cost and search time of N log lines, both candidates.

    python -m bench.log_store            # N=200000 (BENCH_LOG_LINES), prints JSON

- ClickHouse: the `task_logs` table of libs/common/olap.py in chDB (what the replicator writes
  by default), JSONEachRow inserts of 5,000 rows, queries from services/api/repos/logs.py.
- PostgreSQL: a table range-partitioned by day, COPY in batches of 5,000, a (tenant, run_id, ts)
  index for a run's log, substring search with ILIKE — without and with a pg_trgm GIN index.

Uses DATABASE_URL when set, else starts a private PostgreSQL like the tests do. The numbers
behind docs/logs.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from libs.common import olap
from services.api.repos.logs import RUN_LOGS_SQL, SEARCH_SQL, like_pattern

N = int(os.environ.get("BENCH_LOG_LINES", "200000"))
BATCH = 5000
TENANTS = int(os.environ.get("BENCH_LOG_TENANTS", "20"))
RUNS = 2000
WORDS = "fetch page token model retry upstream cache parse embed chunk write read".split()
T0 = 1_767_225_600_000  # 2026-01-01 UTC


def make_rows(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    rows = []
    for i in range(n):
        run = i % RUNS
        words = " ".join(rng.choice(WORDS) for _ in range(12))
        rows.append({
            "tenant": f"t{run % TENANTS}", "run_id": f"run{run}", "task_id": f"task{run}",
            "task_name": "step", "workflow": f"wf{run % 7}", "attempt": 0, "seq": i // RUNS,
            "ts_ms": T0 + i * 10, "level": "info",
            "message": f"{words} item={i}" + (" NEEDLE-found" if i % 10_000 == 0 else ""),
        })
    return rows


async def median_ms(once: Callable[[], Awaitable[int]], repeat: int = 5) -> tuple[float, int]:
    """Median time of `repeat` warm runs (one unmeasured run first), and the rows returned."""
    count = await once()
    times = []
    for _ in range(repeat):
        begin = time.perf_counter()
        count = await once()
        times.append(time.perf_counter() - begin)
    return round(statistics.median(times) * 1000, 1), count


def timed(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


async def clickhouse(rows: list[dict[str, Any]], path: Path) -> dict[str, float]:
    backend = olap.ChdbBackend(path)
    await olap.ensure_schema(backend)
    ch_rows = [{**{k: v for k, v in r.items() if k != "ts_ms"}, "ts": olap.ch_time(r["ts_ms"])}
               for r in rows]
    start = time.perf_counter()
    for i in range(0, len(ch_rows), BATCH):
        await backend.insert(olap.TASK_LOGS, ch_rows[i:i + BATCH])
    write_ms = timed(start)
    since = T0 - 1000

    async def query(sql: str, params: dict[str, Any]) -> tuple[float, int]:
        async def once() -> int:
            return len(await backend.query(sql, {"tenant": f"t{3 % TENANTS}", **params}))

        return await median_ms(once)

    run_ms, run_n = await query(RUN_LOGS_SQL, {"run_id": "run3", "limit": 10_000, "offset": 0})
    rare_ms, _ = await query(SEARCH_SQL, {"pattern": like_pattern("needle-found"),
                                          "workflow": "", "since_ms": since, "limit": 100})
    common_ms, _ = await query(SEARCH_SQL, {"pattern": like_pattern("retry upstream"),
                                            "workflow": "", "since_ms": since, "limit": 100})
    await backend.close()
    size = await asyncio.to_thread(_dir_bytes, path)
    return {"write_ms": write_ms, "rows_per_s": round(len(rows) / write_ms * 1000),
            "run_log_ms": run_ms, "run_log_rows": run_n, "search_rare_ms": rare_ms,
            "search_common_ms": common_ms, "disk_mb": round(size / 2**20, 1)}


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


PG_SCHEMA = """
CREATE TABLE task_logs (
    tenant text NOT NULL, run_id text NOT NULL, task_id text NOT NULL, task_name text NOT NULL,
    workflow text NOT NULL, attempt int NOT NULL, seq int NOT NULL, ts timestamptz NOT NULL,
    level text NOT NULL, message text NOT NULL
) PARTITION BY RANGE (ts);
CREATE INDEX ON task_logs (tenant, run_id, ts);
"""
PG_RUN = ("SELECT * FROM task_logs WHERE tenant = $1 AND run_id = $2"
          " ORDER BY ts, task_id, attempt, seq LIMIT 10000")
PG_SEARCH = ("SELECT * FROM task_logs WHERE tenant = $1 AND ts >= $2 AND message ILIKE $3"
             " ORDER BY ts DESC LIMIT 100")


async def postgres(rows: list[dict[str, Any]], dsn: str, trigram: bool) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS task_logs CASCADE")
        await conn.execute(PG_SCHEMA)
        day = datetime.fromtimestamp(T0 / 1000, UTC)
        last = datetime.fromtimestamp(rows[-1]["ts_ms"] / 1000, UTC)
        while day <= last:
            nxt = day + timedelta(days=1)
            await conn.execute(
                f"CREATE TABLE task_logs_{day:%Y%m%d} PARTITION OF task_logs"
                f" FOR VALUES FROM ('{day.isoformat()}') TO ('{nxt.isoformat()}')"
            )
            day = nxt
        if trigram:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            await conn.execute("CREATE INDEX ON task_logs USING gin (message gin_trgm_ops)")
        records = [
            (r["tenant"], r["run_id"], r["task_id"], r["task_name"], r["workflow"], r["attempt"],
             r["seq"], datetime.fromtimestamp(r["ts_ms"] / 1000, UTC), r["level"], r["message"])
            for r in rows
        ]
        start = time.perf_counter()
        for i in range(0, len(records), BATCH):
            await conn.copy_records_to_table("task_logs", records=records[i:i + BATCH])
        write_ms = timed(start)
        await conn.execute("ANALYZE task_logs")
        since = datetime.fromtimestamp((T0 - 1000) / 1000, UTC)

        async def query(sql: str, *args: Any) -> tuple[float, int]:
            async def once() -> int:
                return len(await conn.fetch(sql, *args))

            return await median_ms(once)

        tenant = f"t{3 % TENANTS}"
        run_ms, run_n = await query(PG_RUN, tenant, "run3")
        rare_ms, _ = await query(PG_SEARCH, tenant, since, "%needle-found%")
        common_ms, _ = await query(PG_SEARCH, tenant, since, "%retry upstream%")
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
            " WHERE inhparent = 'task_logs'::regclass"
        )
        await conn.execute("DROP TABLE task_logs CASCADE")
    finally:
        await conn.close()
    return {"write_ms": write_ms, "rows_per_s": round(len(rows) / write_ms * 1000),
            "run_log_ms": run_ms, "run_log_rows": run_n, "search_rare_ms": rare_ms,
            "search_common_ms": common_ms, "disk_mb": round(int(size) / 2**20, 1)}


async def main(dsn: str) -> dict[str, Any]:
    rows = make_rows(N)
    tmp = Path(tempfile.mkdtemp(prefix="ratchet-logbench-"))
    try:
        result: dict[str, Any] = {"lines": N}
        result["clickhouse_chdb"] = await clickhouse(rows, tmp / "chdb")
        result["postgres_partitioned"] = await postgres(rows, dsn, trigram=False)
        result["postgres_partitioned_trgm"] = await postgres(rows, dsn, trigram=True)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run() -> None:
    dsn = os.environ.get("DATABASE_URL")
    cluster = None
    if not dsn:
        from tools import devstack

        base = Path(tempfile.mkdtemp(prefix="ratchet-logbench-pg-"))
        base.chmod(0o755)
        cluster = devstack.PostgresCluster(base / "data", log_file=base / "postgres.log")
        dsn = cluster.start()
    try:
        print(json.dumps(asyncio.run(main(dsn)), indent=2))
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    run()
