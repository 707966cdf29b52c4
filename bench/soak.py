"""`make soak`: push many tasks through one worker and the full stack, watching memory.

Each task returns a 10 KiB output and writes a log line (the path Hatchet's Python workers are
reported to leak in). The worker runs in its own process (`python -m bench.soak --worker NAME`) so
its RSS is not mixed with this driver's bookkeeping. Every second the driver samples the RSS of
each service (pids from $RATCHET_RUN_DIR/pids or .run/pids), NATS, and the worker.

Growth is measured after warm-up. SOAK_WARMUP_TASKS (50,000) tasks of the same kind run first and
are not measured; then SOAK_TASKS are measured. The baseline is the median RSS over the first 10 %
of the measured tasks, the end the median over the last 10 %. The gate is growth ≤ 5 % for every
service and the worker. (Why a separate warm-up: the replicator's embedded chDB engine takes about
45 s to reach its working set, even with no data flowing — library pages, thread arenas, the
part-merge ladder. A fraction of a 90-second run taken as warm-up measured that ramp, not a leak.) At the end it checks that nothing was lost: every triggered run SUCCEEDED, no
task is left in a queue, the outbox and every JetStream consumer are drained.

Every process also has a ceiling (RSS_BOUNDS_MB, the bounds docs/operations.md states): its
peak RSS must stay under it, warm-up included. The JSON reports each process's peak, and its
peak anonymous memory (the part that is the process's own: file-backed pages of its code are
shared and reclaimable; see docs/operations.md).

Knobs: SOAK_TASKS (100000), SOAK_OUTPUT_BYTES (10240), SOAK_SLOTS (50), SOAK_BACKLOG (2000 runs
triggered but not finished at most), SOAK_BATCH (500), SOAK_SAMPLE_S (1.0), SOAK_WARMUP_TASKS (50000),
SOAK_GATE (`growth+bounds`; `bounds` for a short run, where growth after a short warm-up says
little), SOAK_OUT (the JSON file; default bench/results/soak-<time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ratchet import Ratchet, Workflow

ROOT = Path(__file__).resolve().parents[1]
RUN = Path(os.environ.get("RATCHET_RUN_DIR") or ROOT / ".run").resolve()
RESULTS = ROOT / "bench" / "results"
SERVICES = ("api", "dispatcher", "scheduler", "matcher", "replicator")
GATED = (*SERVICES, "worker")  # the growth limit applies to these; nats is informational
GROWTH_LIMIT_PCT = 5.0
# Peak RSS ceilings in MiB, per process (docs/operations.md, "Memory", states the same).
RSS_BOUNDS_MB: dict[str, float] = {
    "api": 160, "dispatcher": 120, "scheduler": 200, "matcher": 120, "replicator": 450,
    "nats": 512, "worker": 120,
}
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


N_TASKS = _env_int("SOAK_TASKS", 100_000)
OUTPUT_BYTES = _env_int("SOAK_OUTPUT_BYTES", 10 * 1024)
SLOTS = _env_int("SOAK_SLOTS", 50)
BACKLOG = _env_int("SOAK_BACKLOG", 2_000)
BATCH = _env_int("SOAK_BATCH", 500)
SAMPLE_S = float(os.environ.get("SOAK_SAMPLE_S", "1.0"))
WARMUP_TASKS = _env_int("SOAK_WARMUP_TASKS", 50_000)
GATE = os.environ.get("SOAK_GATE", "growth+bounds")
DRAIN_TIMEOUT_S = 600.0
SETTLE_TIMEOUT_S = 180.0


# ------------------------------------------------------------------------------ the workload


def soak_workflow(r: Ratchet, name: str) -> Workflow:
    """One task: a log line and an OUTPUT_BYTES output that differs per run."""
    from ratchet import Context

    wf = r.workflow(name)

    @wf.task()
    async def produce(input: dict[str, int], ctx: Context) -> dict[str, Any]:
        i = int(input["i"])
        blob = (f"{i:010d}" * (OUTPUT_BYTES // 10 + 1))[:OUTPUT_BYTES]
        ctx.log(f"soak task {i}: produced {len(blob)} bytes")
        return {"i": i, "blob": blob}

    return wf


def run_worker(name: str) -> None:
    """The worker process: serve the soak workflow until SIGTERM."""
    from ratchet import Ratchet

    r = Ratchet()
    r.worker(f"soak-worker-{name}", workflows=[soak_workflow(r, name)], slots=SLOTS).start()


def spawn_worker(name: str) -> subprocess.Popen[bytes]:
    """Start the worker process; its output goes to <run dir>/logs/soak-worker.log."""
    log_path = RUN / "logs" / "soak-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.soak", "--worker", name],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )


# ------------------------------------------------------------------------------ memory


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident set size of `pid` in MiB (`field`: VmRSS, or RssAnon for its anonymous part),
    or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def stack_pids() -> dict[str, int]:
    """Pids of the stack's services and NATS, from the run directory's pid files."""
    pids: dict[str, int] = {}
    for name in (*SERVICES, "nats"):
        try:
            pids[name] = int((RUN / "pids" / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return pids


@dataclass
class Sample:
    t: float
    completed: int
    rss_mb: dict[str, float]
    anon_mb: dict[str, float] = field(default_factory=dict)


def growth(samples: list[Sample], warmup: int, measured: int) -> dict[str, dict[str, float]]:
    """Per process over the measured tasks (completions warmup .. warmup + measured): baseline
    (median over their first 10 %), end (median over their last 10 %), growth %, and peak."""
    lo, hi, tail = warmup, warmup + 0.1 * measured, warmup + 0.9 * measured
    out: dict[str, dict[str, float]] = {}
    names = sorted({name for s in samples for name in s.rss_mb})
    for name in names:
        series = [(s.completed, s.rss_mb[name]) for s in samples if name in s.rss_mb]
        base = [v for c, v in series if lo <= c <= hi]
        end = [v for c, v in series if c >= tail]
        entry = {"peak_mb": round(max(v for _, v in series), 1)}
        if base and end:
            b, e = statistics.median(base), statistics.median(end)
            entry |= {
                "baseline_mb": round(b, 1),
                "end_mb": round(e, 1),
                "growth_pct": round((e - b) / b * 100, 2),
            }
        out[name] = entry
    return out


# ------------------------------------------------------------------------------ the driver


@dataclass
class Soak:
    name: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:8]}")
    triggered: int = 0
    completed: int = 0  # runs that reached a terminal state
    unfinished: set[str] = field(default_factory=set)
    samples: list[Sample] = field(default_factory=list)

    async def main(self) -> dict[str, Any]:
        import asyncpg
        from ratchet import Ratchet

        r = Ratchet()
        await r._register_async(soak_workflow(r, self.name))
        self.tenant = os.environ.get("RATCHET_TENANT", "dev")
        self.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=2)
        worker = spawn_worker(self.name)
        pids = {**stack_pids(), "worker": worker.pid}
        t0 = time.time()
        try:
            sampler = asyncio.create_task(self.sample(pids))
            await self.feed(r)
            await self.drain(worker)
            elapsed = time.time() - t0
            report = await self.settle()
            sampler.cancel()
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            await self.pool.close()
            await r.aclose()
        report |= {"elapsed_s": round(elapsed, 1), "tasks_per_s": round(self.completed / elapsed, 1)}
        return report | self.memory_report()

    async def poll(self) -> None:
        """Move finished runs out of `unfinished` (primary-key lookups, bounded by BACKLOG)."""
        if not self.unfinished:
            return
        rows = await self.pool.fetch(
            "SELECT id, status FROM runs WHERE tenant_id = $1 AND id = ANY($2::text[])"
            " AND status = ANY($3::text[])", self.tenant, list(self.unfinished), list(TERMINAL),
        )
        for row in rows:
            self.unfinished.discard(row["id"])
        self.completed += len(rows)

    async def feed(self, r: Ratchet) -> None:
        """Trigger in bulk while fewer than BACKLOG runs are unfinished."""
        total = WARMUP_TASKS + N_TASKS
        while self.triggered < total:
            await self.poll()
            if len(self.unfinished) >= BACKLOG:
                await asyncio.sleep(0.2)
                continue
            n = min(BATCH, total - self.triggered)
            body = {"runs": [{"input": {"i": self.triggered + k}} for k in range(n)]}
            out = await r.arequest("POST", f"/workflows/{self.name}/run/bulk", json=body)
            self.unfinished.update(out["run_ids"])
            self.triggered += len(out["run_ids"])

    async def drain(self, worker: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.unfinished and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the soak worker exited with {worker.returncode}")
            await asyncio.sleep(0.5)
            await self.poll()

    async def sample(self, pids: dict[str, int]) -> None:
        last_report = 0.0
        while True:
            rss = {name: mb for name, pid in pids.items() if (mb := rss_mb(pid)) is not None}
            anon = {name: mb for name, pid in pids.items()
                    if (mb := rss_mb(pid, "RssAnon")) is not None}
            self.samples.append(Sample(time.time(), self.completed, rss, anon))
            if time.monotonic() - last_report >= 15:
                last_report = time.monotonic()
                mem = " ".join(f"{k}={v:.0f}" for k, v in sorted(rss.items()))
                phase = "warm-up" if self.completed < WARMUP_TASKS else "measured"
                print(f"soak: {self.completed:,}/{WARMUP_TASKS + N_TASKS:,} done ({phase});"
                      f" rss MiB {mem}", flush=True)
            await asyncio.sleep(SAMPLE_S)

    async def settle(self) -> dict[str, Any]:
        """Give consumers (the replicator's above all) and the outbox time to catch up."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while True:
            report = await self.check()
            if queues_empty(report["queue_depths"]) or time.monotonic() >= deadline:
                return report
            await asyncio.sleep(1.0)

    async def check(self) -> dict[str, Any]:
        """Lost runs, leftover queue rows, outbox and JetStream consumer backlogs."""
        by_status = {
            row["status"]: int(row["n"]) for row in await self.pool.fetch(
                "SELECT status, count(*) AS n FROM runs WHERE workflow = $1 GROUP BY status",
                self.name,
            )
        }
        open_tasks = {
            row["status"]: int(row["n"]) for row in await self.pool.fetch(
                "SELECT status, count(*) AS n FROM tasks WHERE tenant_id = $1"
                " AND status <> ALL($2::text[]) GROUP BY status", self.tenant, list(TERMINAL),
            )
        }
        outbox = int(await self.pool.fetchval("SELECT count(*) FROM outbox"))
        succeeded = by_status.get("SUCCEEDED", 0)
        return {
            "workflow": self.name,
            "tasks": self.triggered,
            "succeeded": succeeded,
            "runs_by_status": by_status,
            "lost_runs": self.triggered - succeeded,
            "queue_depths": {
                "tasks_not_terminal": open_tasks,
                "outbox_rows": outbox,
                "jetstream_pending": await jetstream_pending(),
            },
        }

    def memory_report(self) -> dict[str, Any]:
        per_process = growth(self.samples, WARMUP_TASKS, self.triggered - WARMUP_TASKS)
        gated = [v["growth_pct"] for k, v in per_process.items() if k in GATED and "growth_pct" in v]
        worst = max(gated) if gated else None
        peaks = {k: v["peak_mb"] for k, v in per_process.items()}
        return {
            "rss_peak_mb": peaks,
            "rss_peak_anon_mb": {
                name: round(max(s.anon_mb[name] for s in self.samples if name in s.anon_mb), 1)
                for name in peaks if any(name in s.anon_mb for s in self.samples)
            },
            "rss_bounds_mb": RSS_BOUNDS_MB,
            "rss_over_bound": over_bound(peaks),
            "rss_growth_pct": worst,
            "rss_growth_limit_pct": GROWTH_LIMIT_PCT,
            "rss_by_process": per_process,
            "rss_samples": [
                {"t": round(s.t, 1), "completed": s.completed, **{k: round(v, 1) for k, v in s.rss_mb.items()}}
                for s in self.samples
            ],
        }


async def jetstream_pending() -> dict[str, dict[str, int]]:
    """Unprocessed and unacknowledged messages of every durable consumer, by stream.

    Ephemeral consumers (KV watchers) are not queues and are left out.
    """
    import nats

    # NATS_URL lists every node of a cluster, comma-separated.
    servers = [u.strip() for u in os.environ["NATS_URL"].split(",") if u.strip()]
    nc = await nats.connect(servers=servers,
                            user_credentials=os.environ.get("NATS_CREDS") or None)
    try:
        jsm = nc.jsm()
        out: dict[str, dict[str, int]] = {}
        for stream in await jsm.streams_info():
            name = stream.config.name or ""
            for consumer in await jsm.consumers_info(name):
                if not consumer.config.durable_name:
                    continue
                out[f"{name}/{consumer.name}"] = {
                    "pending": int(consumer.num_pending or 0),
                    "ack_pending": int(consumer.num_ack_pending or 0),
                }
        return out
    finally:
        await nc.close()


def queues_empty(depths: dict[str, Any]) -> bool:
    backlog = sum(v["pending"] + v["ack_pending"] for v in depths["jetstream_pending"].values())
    return not depths["tasks_not_terminal"] and depths["outbox_rows"] == 0 and backlog == 0


def over_bound(peaks: dict[str, float]) -> dict[str, float]:
    """The processes whose peak RSS went past their bound, with that peak."""
    return {name: peak for name, peak in peaks.items()
            if name in RSS_BOUNDS_MB and peak > RSS_BOUNDS_MB[name]}


def passed(report: dict[str, Any], gate: str = GATE) -> bool:
    worst = report["rss_growth_pct"]
    growth_ok = "growth" not in gate or (worst is not None and worst <= GROWTH_LIMIT_PCT)
    bounds_ok = "bounds" not in gate or not report["rss_over_bound"]
    return (growth_ok and bounds_ok and report["lost_runs"] == 0
            and queues_empty(report["queue_depths"]))


def print_report(report: dict[str, Any], out: Path) -> None:
    print(f"soak: {report['succeeded']:,}/{report['tasks']:,} runs succeeded"
          f" ({WARMUP_TASKS:,} warm-up, then {report['tasks'] - WARMUP_TASKS:,} measured) in "
          f"{report['elapsed_s']} s ({report['tasks_per_s']} tasks/s), "
          f"{OUTPUT_BYTES} B outputs + a log line each; lost runs: {report['lost_runs']}")
    print(f"{'process':<12} {'peak MiB':>9} {'baseline':>9} {'end':>9} {'growth %':>9}")
    for name, row in report["rss_by_process"].items():
        print(f"{name:<12} {row['peak_mb']:>9.1f} {row.get('baseline_mb', float('nan')):>9.1f}"
              f" {row.get('end_mb', float('nan')):>9.1f} {row.get('growth_pct', float('nan')):>9.2f}")
    depths = report["queue_depths"]
    backlog = {k: v for k, v in depths["jetstream_pending"].items() if v["pending"] or v["ack_pending"]}
    print(f"queues after drain: open tasks {depths['tasks_not_terminal'] or 0}, outbox "
          f"{depths['outbox_rows']}, jetstream backlog {backlog or 0}")
    verdict = "PASS" if report["passed"] else "FAIL"
    print(f"{verdict} ({GATE}): worst RSS growth after warm-up {report['rss_growth_pct']} % "
          f"(limit {GROWTH_LIMIT_PCT} %, services and worker); over their RSS bound: "
          f"{report['rss_over_bound'] or 'none'}")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", metavar="WORKFLOW", help="run the soak worker process")
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    report = asyncio.run(Soak().main())
    report["passed"] = passed(report)
    report["config"] = {"tasks": N_TASKS, "output_bytes": OUTPUT_BYTES, "slots": SLOTS,
                        "backlog": BACKLOG, "batch": BATCH, "warmup_tasks": WARMUP_TASKS,
                        "gate": GATE}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(os.environ.get("SOAK_OUT") or RESULTS / f"soak-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, out)
    if not report["passed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
