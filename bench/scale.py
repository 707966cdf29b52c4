"""`make bench-scale`: the no-op workload over 8 tenants with 1 or 2 schedulers, 1 or 3 NATS nodes.

Configs (BENCH_SCALE_CONFIGS picks, comma-separated): `1n1s` (1 NATS node, 1 scheduler),
`1n2s` (1 node, 2 schedulers), `3n2s` (3 nodes with R3 streams, 2 schedulers); one dispatcher,
matcher, replicator and API each. Every config gets a fresh private stack (bench/cluster.py,
BENCH_SCALE_RUN_DIR) and 8 tenants (`tools.admin ensure-tenant`); one worker process
(`python -m bench.scale --worker ...`) serves them all, one SDK worker per tenant.

BENCH_SCALE_TASKS no-op single-task runs are triggered in bulk requests of 500, round-robin
over the tenants. The window measured runs from just before the first trigger to the moment
every run SUCCEEDED, plus BENCH_SCALE_SETTLE_S (2 s: PostgreSQL publishes a busy backend's
statistics at most once a second; the outbox drains). Per config:

- tasks_per_s: tasks / (last run's finished_at - first trigger), as bench/run.py;
- cpu_us_per_task: utime+stime deltas from /proc (bench/cpu.py) of every process — each NATS
  node, scheduler, dispatcher, matcher, replicator, API, the worker process and PostgreSQL with
  all its backends — divided by the tasks;
- partitions_per_scheduler: unexpired leases in `scheduler_partitions` by owner, at the end;
- pg_commits_per_task, pg_rows_per_task: pg_stat_database xact_commit and
  tup_inserted + tup_updated (+ deleted, reported apart) deltas of the stack's database;
- nats_msgs_per_task: the sum over nodes of /varz in_msgs deltas (in a cluster this counts a
  message again on every node a route or a replica brings it to), and per node.

Written to bench/results/bench-scale-<ts>.json. Env: BENCH_SCALE_TASKS (20000),
BENCH_SCALE_SLOTS (100 per tenant), BENCH_SCALE_CONFIGS (1n1s,1n2s,3n2s),
BENCH_SCALE_RUN_DIR (/tmp/ratchet-bench-scale, wiped for every config), BENCH_SCALE_SETTLE_S (2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.cluster import ROOT, Stack, by_role, http_json, worker_spawn
from bench.cpu import cpu_s

CONFIGS: dict[str, dict[str, int]] = {
    "1n1s": {"NATS_NODES": 1, "SCHEDULERS": 1},
    "1n2s": {"NATS_NODES": 1, "SCHEDULERS": 2},
    "3n2s": {"NATS_NODES": 3, "SCHEDULERS": 2},
}
N_TENANTS = 8
BATCH = 500
N_TASKS = int(os.environ.get("BENCH_SCALE_TASKS", "20000"))
SLOTS = int(os.environ.get("BENCH_SCALE_SLOTS", "100"))
SETTLE_S = float(os.environ.get("BENCH_SCALE_SETTLE_S", "2"))
WAIT_TIMEOUT_S = 600.0
PG_STATS = ("xact_commit", "tup_inserted", "tup_updated", "tup_deleted")


# ------------------------------------------------------------------------------ pure helpers


def per_task(before: dict[str, float], after: dict[str, float], tasks: int,
             scale: float = 1.0) -> dict[str, float]:
    """(after - before) * scale / tasks for every key of `after`, rounded to 0.01."""
    return {k: round((after[k] - before.get(k, 0.0)) * scale / max(tasks, 1), 2) for k in after}


def owner_counts(rows: list[tuple[int, str]], names: dict[str, str]) -> dict[str, int]:
    """Partitions per scheduler from (partition, owner) leases; `names` maps owner -> name."""
    out: dict[str, int] = {}
    for _part, owner in rows:
        key = names.get(owner, owner)
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def round_robin(total: int, tenants: int, batch: int) -> list[tuple[int, int]]:
    """(tenant index, count) bulk requests: `total` runs, `batch` at most each, tenants in turn."""
    per = [total // tenants + (1 if j < total % tenants else 0) for j in range(tenants)]
    out: list[tuple[int, int]] = []
    while any(per):
        for j in range(tenants):
            if per[j]:
                n = min(batch, per[j])
                out.append((j, n))
                per[j] -= n
    return out


# ------------------------------------------------------------------------------ the worker


def serve(spec: Path, workflow: str) -> None:
    """The worker process: a no-op task for every tenant in `spec`, until killed."""
    from ratchet import Context, Ratchet

    tenants = json.loads(spec.read_text())

    async def main() -> None:
        workers = []
        for t in tenants:
            r = Ratchet(token=t["token"])
            wf = r.workflow(workflow)

            @wf.task()
            async def noop(input: dict[str, Any], ctx: Context) -> dict[str, int]:
                return {"ok": 1}

            workers.append(r.worker(f"scale-{t['tenant']}", workflows=[wf], slots=SLOTS))
        async with asyncio.TaskGroup() as tg:
            for w in workers:
                tg.create_task(w.astart())

    asyncio.run(main())


# ------------------------------------------------------------------------------ one config


class Measure:
    """Counters of every process of the stack, read before and after the workload."""

    def __init__(self, stack: Stack, pool: asyncpg.Pool, worker_pid: int) -> None:
        self.stack = stack
        self.pool = pool
        self.worker_pid = worker_pid

    async def read(self) -> dict[str, dict[str, float]]:
        rows = [r for r in await asyncio.to_thread(self.stack.processes) if r["alive"]]
        cpu = {r["name"]: cpu_s(int(r["pid"]), tree=r["role"] == "postgres") for r in rows}
        cpu["worker"] = cpu_s(self.worker_pid, tree=True)
        nats = {}
        for node in by_role(rows, "nats"):
            varz = await asyncio.to_thread(http_json, node["ports"]["monitor"], "/varz")
            nats[node["name"]] = float(varz["in_msgs"])
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            stat = await conn.fetchrow(
                f"SELECT {', '.join(PG_STATS)} FROM pg_stat_database"
                " WHERE datname = current_database()")
        return {"cpu": cpu, "nats": nats, "pg": {k: float(stat[k]) for k in PG_STATS}}


async def run_config(name: str, run_dir: Path) -> dict[str, Any]:
    stack = Stack(run_dir, CONFIGS[name])
    print(f"bench-scale {name}: fresh stack {dict(stack.counts)}", flush=True)
    await asyncio.to_thread(stack.clean)
    await asyncio.to_thread(stack.up)
    env = stack.export_env()
    workflow = f"scale-noop-{int(time.time())}"
    tenants = []
    for j in range(N_TENANTS):
        tenant = f"scale-t{j}"
        tenants.append({"tenant": tenant,
                        "token": await asyncio.to_thread(stack.ensure_tenant, tenant)})
    spec = run_dir / "scale-tenants.json"
    spec.write_text(json.dumps(tenants))
    worker = worker_spawn(["bench.scale", "--worker", str(spec), workflow],
                          run_dir / "logs" / "scale-worker.log")
    pool = await asyncpg.create_pool(env["DATABASE_URL"], min_size=1, max_size=2)
    clients = [httpx.AsyncClient(base_url=env["RATCHET_API_URL"], timeout=60,
                                 headers={"authorization": f"Bearer {t['token']}"})
               for t in tenants]
    names = [t["tenant"] for t in tenants]
    try:
        await warm_up(clients, pool, names, workflow)
        measure = Measure(stack, pool, worker.pid)
        before = await measure.read()
        t0 = time.time()
        for j, n in round_robin(N_TASKS, N_TENANTS, BATCH):
            resp = await clients[j].post(f"/workflows/{workflow}/run/bulk",
                                         json={"runs": [{"input": {}}] * n})
            resp.raise_for_status()
        triggered_s = time.time() - t0
        last = await wait_done(pool, names, workflow, N_TASKS + N_TENANTS, t0)
        await asyncio.sleep(SETTLE_S)
        after = await measure.read()
        owners = [(int(r["partition"]), str(r["owner"])) for r in await pool.fetch(
            "SELECT partition, owner FROM scheduler_partitions"
            " WHERE owner IS NOT NULL AND expires_at > now()")]
        members = {str(r["instance"]): int(r["pid"]) for r in await pool.fetch(
            "SELECT instance, pid FROM scheduler_members")}
        by_pid = {int(r["pid"]): str(r["name"]) for r in by_role(
            await asyncio.to_thread(stack.processes), "scheduler") if r["alive"]}
    finally:
        for c in clients:
            await c.aclose()
        await pool.close()
        worker.kill()
        worker.wait()
        await asyncio.to_thread(stack.down)
    sched_names = {inst: by_pid.get(pid, f"pid {pid}") for inst, pid in members.items()}
    cpu = per_task(before["cpu"], after["cpu"], N_TASKS, scale=1e6)
    pg = per_task(before["pg"], after["pg"], N_TASKS)
    nats = per_task(before["nats"], after["nats"], N_TASKS)
    elapsed = last - t0
    return {
        "stack": dict(stack.counts),
        "tasks": N_TASKS,
        "tenants": N_TENANTS,
        "elapsed_s": round(elapsed, 2),
        "trigger_s": round(triggered_s, 2),
        "tasks_per_s": round(N_TASKS / elapsed, 1),
        "cpu_us_per_task": dict(sorted(cpu.items(), key=lambda kv: -kv[1])),
        "cpu_us_per_task_total": round(sum(cpu.values()), 1),
        "partitions_per_scheduler": owner_counts(owners, sched_names),
        "pg_commits_per_task": pg["xact_commit"],
        "pg_rows_per_task": round(pg["tup_inserted"] + pg["tup_updated"], 2),
        "pg_rows_inserted_per_task": pg["tup_inserted"],
        "pg_rows_updated_per_task": pg["tup_updated"],
        "pg_rows_deleted_per_task": pg["tup_deleted"],
        "nats_msgs_per_task": round(sum(nats.values()), 2),
        "nats_in_msgs_per_task_by_node": nats,
    }


async def warm_up(clients: list[httpx.AsyncClient], pool: asyncpg.Pool, tenants: list[str],
                  workflow: str) -> None:
    """One run per tenant (registers the workflow, connects every SDK worker)."""
    deadline = time.monotonic() + 120
    registered: set[int] = set()
    while len(registered) < len(clients):  # the worker registers the workflow when it starts
        for j, c in enumerate(clients):
            if j in registered:
                continue
            resp = await c.post(f"/workflows/{workflow}/run", json={"input": {}})
            if resp.is_success:
                registered.add(j)
        if time.monotonic() > deadline:
            raise SystemExit("bench-scale: the worker never registered the workflow")
        await asyncio.sleep(0.5)
    await wait_done(pool, tenants, workflow, len(tenants), 0.0)


async def wait_done(pool: asyncpg.Pool, tenants: list[str], workflow: str, runs: int,
                    since: float) -> float:
    """Poll (0.5 s) until `runs` runs of `workflow` SUCCEEDED; the last finished_at (epoch s)."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while True:
        row = await pool.fetchrow(
            "SELECT count(*) AS n, max(finished_at) AS last FROM runs WHERE tenant_id = ANY($1)"
            " AND status = 'SUCCEEDED' AND workflow = $2", tenants, workflow)
        if row["n"] >= runs:
            return float(row["last"].timestamp())
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench-scale: {row['n']} of {runs} runs succeeded in time")
        await asyncio.sleep(0.5)


async def main() -> dict[str, Any]:
    picked = [c for c in os.environ.get("BENCH_SCALE_CONFIGS", ",".join(CONFIGS)).split(",") if c]
    unknown = [c for c in picked if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"BENCH_SCALE_CONFIGS: unknown {unknown}; known {list(CONFIGS)}")
    run_dir = Path(os.environ.get("BENCH_SCALE_RUN_DIR", "/tmp/ratchet-bench-scale"))
    return {"configs": {name: await run_config(name, run_dir) for name in picked}}


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("TENANTS_JSON", "WORKFLOW"))
    args = parser.parse_args()
    if args.worker:
        serve(Path(args.worker[0]), args.worker[1])
        return
    report = asyncio.run(main())
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"bench-scale-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, c in report["configs"].items():
        print(f"{name}: {c['tasks_per_s']} tasks/s, {c['cpu_us_per_task_total']} µs CPU/task,"
              f" {c['pg_commits_per_task']} commits/task, {c['pg_rows_per_task']} rows/task,"
              f" {c['nats_msgs_per_task']} NATS msgs/task, partitions {c['partitions_per_scheduler']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    run()
