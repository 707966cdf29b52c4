"""`make chaos-cluster`: faults in a clustered stack while a mix of runs flows; nothing may be lost.

The stack (bench/cluster.py, a private run directory, CHAOS_RUN_DIR): 3 NATS nodes (R3 streams),
2 schedulers, 2 dispatchers, 2 matchers, one API and replicator, PostgreSQL; two worker processes
(bench/cluster_worker.py), each serving every bench tenant and given both dispatcher addresses.
Runs go to CHAOS_TENANTS tenants chosen so that every scheduler owns some of them.

The mix, per 10 triggers: 4 two-task DAGs, 2 first -> second -> durable 1 s sleep
(bench/chaos_worker.py), 2 parents that each start and await a child run, 2 events pushed
through the API to a workflow listening on their key through a filter. Triggers flow at
CHAOS_RATE runs/s; fault k is injected once k+1 of F+1 equal shares of the runs were triggered,
and triggering halts half a share later until that fault has been handled, so each fault
strikes runs in flight and triggers keep arriving during it.

Faults, in order (CHAOS_FAULTS picks): `nats` SIGKILLs the node leading the CMD stream;
`scheduler` SIGKILLs the scheduler owning most bench tenants' partitions; `dispatcher` the one
with most connected workers; `matcher` the first; each is restarted with `tools.devstack up`
once its recovery was seen (or after CHAOS_RECOVERY_CAP_S). `scheduler-stop` SIGSTOPs the
scheduler owning most bench tenants' partitions for CHAOS_STOP_S (8 s, past its 5 s lease),
then SIGCONTs it: its stale commits must be refused.

Recovery, per fault: the affected runs are the bench runs in PENDING or RUNNING in PostgreSQL
the moment before the signal (which waits up to 15 s for 5 of them) (for the scheduler faults, only those of tenants whose partition
the victim owned); their SUCCEEDED task rows are counted then. recovery_s is the time from the
signal to the first poll (every 0.25 s) that counts more: the first committed task completion
of a run that was in flight at the fault. null when no run was in flight or none moved within
CHAOS_RECOVERY_CAP_S. settled_s: from the signal to the finished_at of the last of those runs
(a run whose task attempt the fault lost waits for that attempt's retry). Goals (reported, not asserted): scheduler failover <= 10 s, NATS <= 5 s.

Asserted (exit status 1 otherwise): lost == 0 (every acknowledged trigger, an API 2xx for a run
or an event, became a run that SUCCEEDED), double == 0 (no task with two successful attempts,
no task.succeeded recorded twice), events_double == 0 and events_skipped == 0 (each acknowledged
event triggered exactly one run), every run of the bench tenants (children included) SUCCEEDED,
every durable sleep finished once. Written to bench/results/chaos-cluster-<ts>.json.

Env: CHAOS_RUNS (1000), CHAOS_RATE (8), CHAOS_TENANTS (4), CHAOS_FAULTS
(nats,scheduler,dispatcher,matcher,scheduler-stop), CHAOS_STOP_S (8), CHAOS_RECOVERY_CAP_S (90),
CHAOS_SCHEDULERS (2), CHAOS_RUN_DIR (/tmp/ratchet-chaos-cluster, wiped at the start: never
point it at the `.run/` of `make up`), CHAOS_KEEP_STACK (0: `down` at the end).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.chaos import Chaos
from bench.cluster import ROOT, Stack, by_role, http_json, metric, worker_spawn
from bench.cluster_worker import Names, build
from tools.devstack import procs

FAULTS = ("nats", "scheduler", "dispatcher", "matcher", "scheduler-stop")
# One share of 10 triggers, in this order: kind per position.
MIX = ("dag", "dag", "dag", "dag", "nap", "nap", "parent", "parent", "evt", "evt")
RUN_KINDS = ("dag", "nap", "parent")
ACTIVE = ("PENDING", "RUNNING")
POLL_S = 0.25
# A fault waits (up to IN_FLIGHT_WAIT_S) until this many runs of its scope are in flight.
MIN_IN_FLIGHT = 5
IN_FLIGHT_WAIT_S = 15.0
GOALS_S = {"scheduler": 10.0, "scheduler-stop": 10.0, "nats": 5.0}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


# ------------------------------------------------------------------------------ pure helpers


def fault_points(n_runs: int, n_faults: int) -> list[float]:
    """Triggers sent before fault k is injected: k+1 of n_faults+1 equal shares."""
    return [n_runs * (k + 1) / (n_faults + 1) for k in range(n_faults)]


def hold_points(n_runs: int, n_faults: int) -> list[float]:
    """Triggering waits here until fault k was handled: half a share after its fault point."""
    return [n_runs * (k + 1.5) / (n_faults + 1) for k in range(n_faults)]


def pick_tenants(partition_of: dict[str, int], owner_of: dict[int, str], count: int) -> list[str]:
    """`count` candidates, spread round-robin over the partitions' owners (first come first)."""
    groups: dict[str, list[str]] = {}
    for tenant, part in partition_of.items():
        groups.setdefault(owner_of.get(part, ""), []).append(tenant)
    queues = [groups[o] for o in sorted(groups)]
    picked: list[str] = []
    while len(picked) < count and any(queues):
        for q in queues:
            if q and len(picked) < count:
                picked.append(q.pop(0))
    return picked


def event_outcomes(acked: set[int], observed: list[int]) -> tuple[int, int]:
    """(double, skipped): runs beyond one per acknowledged event, and events without a run.

    `observed` holds the event number of every run the event workflow got.
    """
    seen = Counter(observed)
    double = sum(c - 1 for ev, c in seen.items() if c > 1)
    skipped = sum(1 for ev in acked if seen[ev] == 0)
    return double, skipped


ASSERTED = ("lost", "double", "events_double", "events_skipped", "runs_not_succeeded",
            "tasks_without_one_success", "durable_sleeps_unfinished")


def passed(report: dict[str, Any]) -> bool:
    """Every asserted count is zero."""
    return all(report[key] == 0 for key in ASSERTED)


# ------------------------------------------------------------------------------ the harness


@dataclass
class Tenant:
    name: str
    token: str
    filter_id: str = ""


class ChaosCluster:
    def __init__(self) -> None:
        self.n_runs = _env_int("CHAOS_RUNS", 1000)
        self.rate = float(os.environ.get("CHAOS_RATE", "8"))
        self.n_tenants = _env_int("CHAOS_TENANTS", 4)
        self.faults = [f for f in os.environ.get("CHAOS_FAULTS", ",".join(FAULTS)).split(",") if f]
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise SystemExit(f"CHAOS_FAULTS: unknown {sorted(unknown)}; known {FAULTS}")
        self.stop_s = float(os.environ.get("CHAOS_STOP_S", "8"))
        self.cap_s = float(os.environ.get("CHAOS_RECOVERY_CAP_S", "90"))
        counts = {"NATS_NODES": 3, "SCHEDULERS": _env_int("CHAOS_SCHEDULERS", 2),
                  "DISPATCHERS": 2, "MATCHERS": 2}
        run_dir = Path(os.environ.get("CHAOS_RUN_DIR", "/tmp/ratchet-chaos-cluster"))
        self.stack = Stack(run_dir, counts)
        self.names = Names(f"cc{int(time.time())}")
        self.tenants: list[Tenant] = []
        self.acked_runs: dict[str, str] = {}  # run id -> kind
        self.acked_events: dict[int, str] = {}  # event number -> tenant
        self.triggered = 0
        self.triggers_over = False
        self.struck: dict[int, tuple[float, list[str]]] = {}  # fault -> (epoch s, runs in flight)
        self.handled = [asyncio.Event() for _ in self.faults]
        self.fault_log: list[dict[str, Any]] = []
        self.workers: list[Any] = []
        self.t_start = 0.0
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "setup() opens the pool"
        return self._pool

    # -- set-up

    async def setup(self) -> None:
        print(f"chaos-cluster: fresh stack in {self.stack.run_dir} {dict(self.stack.counts)}",
              flush=True)
        await asyncio.to_thread(self.stack.clean)
        await asyncio.to_thread(self.stack.up)
        self.stack.export_env()
        self._pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=4)
        for name in await self.choose_tenants():
            self.tenants.append(Tenant(name, await asyncio.to_thread(self.stack.ensure_tenant, name)))
        from ratchet import Ratchet

        for t in self.tenants:
            r = Ratchet(token=t.token)
            try:
                for wf in build(r, self.names).values():
                    await r.aregister(wf)
                out = await r.arequest("POST", "/filters", json={
                    "workflow": self.names.evt, "expression": f"input.tag == '{self.names.tag}'"})
                t.filter_id = str(out["id"])
            finally:
                await r.aclose()
        spec = self.stack.run_dir / "cluster-tenants.json"
        spec.write_text(json.dumps([{"tenant": t.name, "token": t.token} for t in self.tenants]))
        for index in (1, 2):
            self.workers.append(worker_spawn(
                ["bench.cluster_worker", str(spec), self.names.tag, str(index)],
                self.stack.run_dir / "logs" / f"cluster-worker-{index}.log"))
        await self.warm_up()

    async def choose_tenants(self) -> list[str]:
        """Tenant names spread over the schedulers that own partitions right now."""
        candidates = [f"{self.names.tag}-t{j}" for j in range(8 * self.n_tenants)]
        owners = await self.partition_owners()
        if not owners:
            return candidates[: self.n_tenants]
        return pick_tenants(await self.partition_of(candidates), owners, self.n_tenants)

    async def partition_of(self, tenants: list[str]) -> dict[str, int]:
        """tenant -> its scheduler partition (the count is the table's, fixed at creation)."""
        rows = await self.pool.fetch(
            "SELECT t, ratchet_partition(t, (SELECT count(*)::int FROM scheduler_partitions))"
            " AS p FROM unnest($1::text[]) AS t", tenants)
        return {str(r["t"]): int(r["p"]) for r in rows}

    async def partition_owners(self) -> dict[int, str]:
        """partition -> owner (the scheduler's instance id) of every unexpired lease."""
        rows = await self.pool.fetch(
            "SELECT partition, owner FROM scheduler_partitions"
            " WHERE owner IS NOT NULL AND expires_at > now()")
        return {int(r["partition"]): str(r["owner"]) for r in rows}

    async def warm_up(self) -> None:
        """One run and one event per tenant, retried until the matcher knows the filter."""
        deadline = time.monotonic() + 120
        for j, t in enumerate(self.tenants):
            async with self.client(t) as http:
                await self.trigger_runs(http, "dag", [-1 - j])
                ev = -1000 * (j + 1)
                while not await self.pool.fetchval(
                    "SELECT count(*) FROM runs WHERE tenant_id = $1 AND workflow = $2"
                    " AND status = 'SUCCEEDED'", t.name, self.names.evt):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"chaos-cluster: warm-up event of {t.name} never ran")
                    await self.push_events(http, t.name, [ev], record=False)
                    ev -= 1
                    await asyncio.sleep(2)
        while await self.pool.fetchval(
            "SELECT count(*) FROM runs WHERE tenant_id = ANY($1) AND status <> 'SUCCEEDED'",
            [t.name for t in self.tenants]):
            if time.monotonic() > deadline:
                raise SystemExit("chaos-cluster: warm-up runs did not succeed")
            await asyncio.sleep(0.5)
        print("chaos-cluster: warm-up done", flush=True)

    # -- triggers

    def client(self, t: Tenant) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=os.environ["RATCHET_API_URL"], timeout=10,
                                 headers={"authorization": f"Bearer {t.token}"})

    async def post_acked(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Any:
        """POST until a 2xx (the acknowledgement); retries errors while a part is down.

        A retried run trigger whose first try was applied leaves an unacknowledged extra run;
        events carry their own id, so a retried event is the same event.
        """
        deadline = time.monotonic() + 180
        while True:
            try:
                resp = await http.post(path, json=body)
                if resp.is_success:
                    return resp.json()
                if resp.status_code < 500 and resp.status_code != 429:
                    raise RuntimeError(f"POST {path}: {resp.status_code} {resp.text[:300]}")
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"POST {path}: no acknowledgement for 180 s")
            await asyncio.sleep(0.3)

    async def trigger_runs(self, http: httpx.AsyncClient, kind: str, items: list[int]) -> None:
        wf = getattr(self.names, kind)
        out = await self.post_acked(http, f"/workflows/{wf}/run/bulk",
                                    {"runs": [{"input": {"i": i}} for i in items]})
        for run_id in out["run_ids"]:
            self.acked_runs[run_id] = kind

    async def push_events(self, http: httpx.AsyncClient, tenant: str, items: list[int],
                          record: bool = True) -> None:
        body = {"events": [{"key": self.names.event_key, "payload": {"ev": i, "tag": self.names.tag},
                            "event_id": f"{self.names.tag}-{i}"} for i in items]}
        await self.post_acked(http, "/events/bulk", body)
        if record:
            for i in items:
                self.acked_events[i] = tenant

    async def trigger_all(self) -> None:
        holds = hold_points(self.n_runs, len(self.faults))
        clients = {t.name: self.client(t) for t in self.tenants}
        try:
            base = time.monotonic()
            for start in range(0, self.n_runs, len(MIX)):
                for k, hold in enumerate(holds):
                    if start >= hold and not self.handled[k].is_set():
                        await self.handled[k].wait()
                        base = time.monotonic() - start / self.rate
                await asyncio.sleep(max(0.0, base + start / self.rate - time.monotonic()))
                items = list(range(start, min(start + len(MIX), self.n_runs)))
                t = self.tenants[(start // len(MIX)) % len(self.tenants)]
                http = clients[t.name]
                by_kind: dict[str, list[int]] = {}
                for i in items:
                    by_kind.setdefault(MIX[i % len(MIX)], []).append(i)
                sends = [self.trigger_runs(http, kind, by_kind[kind])
                         for kind in RUN_KINDS if kind in by_kind]
                if "evt" in by_kind:
                    sends.append(self.push_events(http, t.name, by_kind["evt"]))
                await asyncio.gather(*sends)
                self.triggered = items[-1] + 1
        finally:
            for http in clients.values():
                await http.aclose()
            self.triggers_over = True  # a failed trigger loop must not leave faults waiting

    # -- faults

    async def inject_all(self) -> None:
        points = fault_points(self.n_runs, len(self.faults))
        for k, fault in enumerate(self.faults):
            while self.triggered < points[k] and not self.triggers_over:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            try:
                entry = await self.inject(fault)
            finally:
                self.handled[k].set()
            self.fault_log.append(entry)
            print(f"chaos-cluster: {fault} ({entry['victim']}): recovery {entry['recovery_s']} s,"
                  f" {entry['in_flight_runs']} runs in flight", flush=True)

    async def inject(self, fault: str) -> dict[str, Any]:
        rows = await asyncio.to_thread(self.stack.processes)
        scope = [t.name for t in self.tenants]
        if fault == "nats":
            victim = await asyncio.to_thread(self.cmd_leader, rows)
        elif fault.startswith("scheduler"):
            victim, scope = await self.busiest_scheduler(rows)
        elif fault == "dispatcher":
            victim = max(by_role(rows, "dispatcher"), key=lambda r: _connected(r))
        else:
            victim = by_role(rows, "matcher")[0]
        pid = int(victim["pid"])
        runs, done = await self.snapshot(scope)
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while len(runs) < MIN_IN_FLIGHT and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
            runs, done = await self.snapshot(scope)
        t0 = time.monotonic()
        self.struck[len(self.fault_log)] = (time.time(), runs)
        entry: dict[str, Any] = {"fault": fault, "victim": victim["name"],
                                 "at_s": round(t0 - self.t_start, 1), "in_flight_runs": len(runs),
                                 "scope_tenants": len(scope)}
        if fault == "scheduler-stop":
            os.kill(pid, signal.SIGSTOP)
            resume = asyncio.get_running_loop().call_later(self.stop_s, os.kill, pid,
                                                           signal.SIGCONT)
            try:
                entry["recovery_s"] = await self.recovery(runs, done, t0)
                await asyncio.sleep(max(0.0, t0 + self.stop_s - time.monotonic()))
            finally:  # never leave it stopped, whatever failed
                resume.cancel()
                os.kill(pid, signal.SIGCONT)
            entry["stopped_s"] = self.stop_s
        else:
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(procs.wait_until, lambda: not procs.pid_alive(pid), 10.0,
                                    f"{victim['name']} to exit")
            # The only one of its role: nothing can take over, so the restart is the recovery.
            alone = len(by_role(rows, victim["role"])) == 1
            if alone:
                await asyncio.to_thread(self.stack.up)
                entry["restarted_after_s"] = round(time.monotonic() - t0, 1)
            entry["recovery_s"] = await self.recovery(runs, done, t0)
            if not alone:
                await asyncio.to_thread(self.stack.up)
                entry["restarted_after_s"] = round(time.monotonic() - t0, 1)
        return entry

    def cmd_leader(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The NATS node leading the CMD stream (from any live node's /jsz)."""
        nodes = [r for r in by_role(rows, "nats") if r["alive"]]
        for node in nodes:
            try:
                jsz = http_json(node["ports"]["monitor"], "/jsz?accounts=true&streams=true")
            except OSError:
                continue
            for account in jsz.get("account_details", []):
                for stream in account.get("stream_detail", []):
                    leader = (stream.get("cluster") or {}).get("leader")
                    if stream.get("name") == "CMD" and leader:
                        return next((n for n in nodes if n["name"] == leader), nodes[0])
        return nodes[-1]

    async def busiest_scheduler(self, rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
        """The scheduler owning most bench tenants' partitions, and those tenants."""
        scheds = [r for r in by_role(rows, "scheduler") if r["alive"]]
        owners = await self.partition_owners()
        pids = {str(r["instance"]): int(r["pid"]) for r in await self.pool.fetch(
            "SELECT instance, pid FROM scheduler_members")}
        tenants_of: dict[int, list[str]] = {}
        if owners:
            for tenant, part in (await self.partition_of([t.name for t in self.tenants])).items():
                pid = pids.get(owners.get(part, ""), 0)
                tenants_of.setdefault(pid, []).append(tenant)
        live = [s for s in scheds if tenants_of.get(int(s["pid"]))]
        if not live:  # no partition leases yet: one scheduler, every tenant
            return scheds[0], [t.name for t in self.tenants]
        victim = max(live, key=lambda s: len(tenants_of[int(s["pid"])]))
        return victim, tenants_of[int(victim["pid"])]

    async def snapshot(self, tenants: list[str]) -> tuple[list[str], int]:
        runs = [r["id"] for r in await self.pool.fetch(
            "SELECT id FROM runs WHERE tenant_id = ANY($1) AND status = ANY($2)",
            tenants, list(ACTIVE))]
        return runs, await self.succeeded_tasks(runs)

    async def succeeded_tasks(self, runs: list[str]) -> int:
        return int(await self.pool.fetchval(
            "SELECT count(*) FROM tasks WHERE tenant_id = ANY($1) AND run_id = ANY($2)"
            " AND status = 'SUCCEEDED'", [t.name for t in self.tenants], runs))

    async def recovery(self, runs: list[str], done: int, t0: float) -> float | None:
        if not runs:
            return None
        while time.monotonic() - t0 < self.cap_s:
            if await self.succeeded_tasks(runs) > done:
                return round(time.monotonic() - t0, 2)
            await asyncio.sleep(POLL_S)
        return None

    # -- the end

    async def drain(self, timeout_s: float = 300.0) -> None:
        names = [t.name for t in self.tenants]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            active = await self.pool.fetchval(
                "SELECT count(*) FROM runs WHERE tenant_id = ANY($1) AND status = ANY($2)",
                names, list(ACTIVE))
            present = await self.pool.fetchval(
                "SELECT count(*) FROM runs WHERE tenant_id = ANY($1) AND id = ANY($2)",
                names, list(self.acked_runs))
            if active == 0 and present == len(self.acked_runs):
                return
            await asyncio.sleep(0.5)

    async def settled(self) -> None:
        """Per fault, settled_s: from the signal to the end of the last run it found in flight."""
        for k, (at, runs) in self.struck.items():
            last = await self.pool.fetchval(
                "SELECT max(finished_at) FROM runs WHERE tenant_id = ANY($1) AND id = ANY($2)",
                [t.name for t in self.tenants], runs)
            self.fault_log[k]["settled_s"] = round(last.timestamp() - at, 2) if last else None

    async def verify(self) -> dict[str, Any]:
        names = [t.name for t in self.tenants]
        rows = await self.pool.fetch(
            "SELECT id, workflow, status, input FROM runs WHERE tenant_id = ANY($1)", names)
        status = {str(r["id"]): str(r["status"]) for r in rows}
        lost_runs = sum(1 for rid in self.acked_runs if status.get(rid) != "SUCCEEDED")
        ev_of: list[tuple[int, str]] = []  # warm-up events (ev < 0) are left out
        for r in rows:
            if r["workflow"] == self.names.evt:
                ev = int(json.loads(bytes(r["input"]))["ev"])
                if ev >= 0:
                    ev_of.append((ev, str(r["status"])))
        events_double, events_skipped = event_outcomes(set(self.acked_events),
                                                       [ev for ev, _ in ev_of])
        ok_events = {ev for ev, st in ev_of if st == "SUCCEEDED"}
        lost_events = sum(1 for ev in self.acked_events if ev not in ok_events)
        checker = Chaos(0, [])
        checker.run_ids = list(status)
        checks = await checker.verify()
        twice = await self.pool.fetchval(
            "SELECT count(*) FROM (SELECT a.task_id FROM task_attempts a JOIN tasks t"
            " ON t.tenant_id = a.tenant_id AND t.id = a.task_id WHERE t.tenant_id = ANY($1)"
            " AND a.status = 'SUCCEEDED' GROUP BY a.tenant_id, a.task_id HAVING count(*) > 1) x",
            names)
        failures = [dict(r) for r in await self.pool.fetch(
            "SELECT r.id AS run_id, r.workflow, r.status, t.name AS task, a.attempt,"
            " a.status AS attempt_status, a.error::text AS error FROM runs r"
            " LEFT JOIN tasks t ON t.tenant_id = r.tenant_id AND t.run_id = r.id"
            " LEFT JOIN task_attempts a ON a.tenant_id = t.tenant_id AND a.task_id = t.id"
            " WHERE r.tenant_id = ANY($1) AND r.status <> 'SUCCEEDED'"
            " ORDER BY r.id, t.name, a.attempt LIMIT 40", names)]
        retry_errors = {str(r["kind"]): int(r["n"]) for r in await self.pool.fetch(
            "SELECT coalesce(a.error->>'type', a.status) AS kind, count(*) AS n"
            " FROM task_attempts a WHERE a.tenant_id = ANY($1) AND a.status <> 'SUCCEEDED'"
            " GROUP BY 1", names)}
        by_workflow = Counter(str(r["workflow"]).removeprefix(f"{self.names.tag}-") for r in rows)
        children = by_workflow.get("child", 0)
        return {
            "lost": lost_runs + lost_events,
            "double": int(twice) + int(str(checks["double_completed_attempts"])),
            "events_double": events_double,
            "events_skipped": events_skipped,
            "acked_runs": len(self.acked_runs),
            "acked_events": len(self.acked_events),
            "runs_total": len(rows),
            "runs_by_workflow": dict(by_workflow),
            "unacked_runs": len(rows) - len(self.acked_runs) - children
            - by_workflow.get("evt", 0),
            "statuses": dict(Counter(status.values())),
            "runs_not_succeeded": sum(1 for s in status.values() if s != "SUCCEEDED"),
            "tasks_without_one_success": checks["tasks_without_one_success"],
            "retried_attempts": checks["retried_attempts"],
            "re_executed_tasks": checks["re_executed_tasks"],
            "durable_sleeps_unfinished": checks["durable_sleeps_unfinished"],
            "not_succeeded_sample": failures,
            "retried_attempt_errors": retry_errors,
        }

    async def main(self) -> dict[str, Any]:
        wall0 = time.monotonic()
        try:
            await self.setup()
            self.t_start = time.monotonic()
            triggers = asyncio.create_task(self.trigger_all())
            try:
                await self.inject_all()
            finally:
                await triggers
            trigger_s = time.monotonic() - self.t_start
            await self.drain()
            report = await self.verify()
            await self.settled()
        finally:
            if self._pool is not None:
                await self._pool.close()
            for w in self.workers:
                w.kill()
                w.wait()
            if os.environ.get("CHAOS_KEEP_STACK", "0") != "1":
                await asyncio.to_thread(self.stack.down)
        recovery = {f["fault"]: f["recovery_s"] for f in self.fault_log}
        return {
            **report,
            "recovery_s": recovery,
            "goals_s": {k: v for k, v in GOALS_S.items() if k in recovery},
            "faults": self.fault_log,
            "stack": dict(self.stack.counts),
            "tenants": len(self.tenants),
            "rate_per_s": self.rate,
            "trigger_s": round(trigger_s, 1),
            "wall_s": round(time.monotonic() - wall0, 1),
        }


def _connected(row: dict[str, Any]) -> float:
    try:
        return metric(row["ports"]["metrics"], "ratchet_dispatcher_connected_workers")
    except OSError:
        return 0.0


def run() -> int:
    report = asyncio.run(ChaosCluster().main())
    print(json.dumps(report, indent=2))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"chaos-cluster-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    ok = passed(report)
    print(f"chaos-cluster: {'PASS' if ok else 'FAIL'}: {report['lost']} lost, {report['double']}"
          f" double, events {report['events_double']} double / {report['events_skipped']}"
          f" skipped; wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(run())
