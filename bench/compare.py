"""`make bench-compare`: the same three workloads through Ratchet and through Celery, one run.

    (a) noop     N no-op tasks triggered in bulk, throughput with results stored
    (b) chain    M three-step chains (Ratchet: a 3-task DAG workflow; Celery: chain of 3)
    (c) latency  a steady R tasks/s for S seconds, trigger→start percentiles

Ratchet runs on the stack `make up` started (env from .run/env or $RATCHET_RUN_DIR/env) with an
in-process SDK worker, as `make bench` does. Celery gets its fastest honest configuration: one
`--pool=solo` worker process, prefetch multiplier 4, Redis broker and result backend — a private
redis-server on a free 127.0.0.1 port, started here and stopped at the end.

Trigger→start is the task's start wall time minus the trigger wall time the client recorded just
before the trigger call (same machine, same clock). Throughput ends when the last result is
available: the run's `finished_at` in Ratchet, the result's arrival at the client in Celery.

Knobs: COMPARE_NOOP_TASKS (10000), COMPARE_CHAINS (2000), COMPARE_RATE (100),
COMPARE_LATENCY_S (15), COMPARE_BATCH (500), COMPARE_SLOTS (200), COMPARE_SYSTEMS
("ratchet,celery"), COMPARE_WORKLOADS ("noop,chain,latency").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


N_NOOP = _env_int("COMPARE_NOOP_TASKS", 10_000)
N_CHAINS = _env_int("COMPARE_CHAINS", 2_000)
RATE_PER_S = _env_int("COMPARE_RATE", 100)
LATENCY_S = _env_int("COMPARE_LATENCY_S", 15)
BATCH = _env_int("COMPARE_BATCH", 500)
SLOTS = _env_int("COMPARE_SLOTS", 1000)
CHAIN_STEPS = 3
Row = dict[str, float]  # one system's figures for one workload
WAIT_TIMEOUT_S = 900.0
SETTLE_TIMEOUT_S = 180.0


# ------------------------------------------------------------------------------ statistics


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))  # the smallest value with >= p % at or below it
    return ordered[min(len(ordered), max(1, rank)) - 1]


def summarize(
    *,
    runs: int,
    tasks_per_run: int,
    t0: float,
    end: float,
    start_ms: list[float],
    result_ms: list[float],
    triggers_sent: float | None = None,
) -> dict[str, float]:
    """One system's figures for one workload (`triggers_sent`: when the last trigger returned)."""
    elapsed = max(end - t0, 1e-9)
    out = {
        "runs": float(runs),
        "tasks": float(runs * tasks_per_run),
        "elapsed_s": round(elapsed, 3),
        "trigger_s": round((triggers_sent if triggers_sent is not None else end) - t0, 3),
        "runs_per_s": round(runs / elapsed, 1),
        "tasks_per_s": round(runs * tasks_per_run / elapsed, 1),
    }
    for label, values in (("start", start_ms), ("result", result_ms)):
        for p in (50, 95, 99):
            out[f"{label}_p{p}_ms"] = round(pct(values, p), 2)
    return out


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, rounded; NaN when either side is missing."""
    return round(ours / theirs, 3) if ours > 0 and theirs > 0 else float("nan")


def pace(rate_per_s: int, seconds: int) -> list[float]:
    """Offsets (s from the start) of a steady trigger schedule."""
    return [k / rate_per_s for k in range(rate_per_s * seconds)]


# ------------------------------------------------------------------------------ Ratchet


class RatchetSide:
    """The three workloads through the local stack and one in-process SDK worker."""

    def __init__(self) -> None:
        from ratchet import Context, Ratchet

        self.r = Ratchet()
        self.suffix = uuid.uuid4().hex[:8]
        self.starts: dict[int, float] = {}  # i → task start wall time (first step for chains)
        self.done = 0
        self.expected = 0
        self.all_done = asyncio.Event()
        self.noop_wf = self.r.workflow(f"cmp-noop-{self.suffix}")
        self.chain_wf = self.r.workflow(f"cmp-chain-{self.suffix}")

        @self.noop_wf.task()
        async def noop(input: dict[str, float], ctx: Context) -> dict[str, int]:
            self.starts[int(input["i"])] = time.time()
            self._finished_one()
            return {"ok": 1}

        @self.chain_wf.task()
        async def first(input: dict[str, float], ctx: Context) -> dict[str, int]:
            self.starts[int(input["i"])] = time.time()
            return {"steps": 1}

        @self.chain_wf.task(parents=[first])
        async def second(input: dict[str, float], ctx: Context) -> dict[str, int]:
            return {"steps": ctx.parent_output(first)["steps"] + 1}

        @self.chain_wf.task(parents=[second])
        async def third(input: dict[str, float], ctx: Context) -> dict[str, int]:
            self._finished_one()
            return {"steps": ctx.parent_output(second)["steps"] + 1}

        self.worker = self.r.worker(
            f"cmp-worker-{self.suffix}", workflows=[self.noop_wf, self.chain_wf], slots=SLOTS
        )

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[dict[str, Callable[[], Awaitable[Row]]]]:
        """Start the worker, warm both workflows up, yield the workloads, stop the worker."""
        import asyncpg

        self.pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=2)
        worker_task = asyncio.create_task(self.worker.astart())
        try:
            await self.worker.wait_connected(30)
            assert await self.noop_wf.aio_run({"i": -1, "t": time.time()}, timeout_s=60)
            assert await self.chain_wf.aio_run({"i": -1, "t": time.time()}, timeout_s=60)
            yield {
                "noop": lambda: self.bulk(self.noop_wf.name, N_NOOP, 1),
                "chain": lambda: self.bulk(self.chain_wf.name, N_CHAINS, CHAIN_STEPS),
                "latency": lambda: self.steady(self.noop_wf.name),
            }
        finally:
            await self.worker.astop()
            await asyncio.wait_for(worker_task, 30)
            await self.pool.close()
            await self.r.aclose()

    async def quiesce(self, timeout_s: float = SETTLE_TIMEOUT_S) -> float:
        """Wait until no durable consumer has work left and the outbox is empty; return seconds."""
        from bench.soak import jetstream_pending

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            pending = await jetstream_pending()
            backlog = sum(v["pending"] + v["ack_pending"] for v in pending.values())
            outbox = await self.pool.fetchval("SELECT count(*) FROM outbox")
            if backlog == 0 and outbox == 0:
                break
            await asyncio.sleep(0.5)
        return round(time.monotonic() - t0, 1)

    def _reset(self, expected: int) -> None:
        self.starts.clear()
        self.done = 0
        self.expected = expected
        self.all_done.clear()

    def _finished_one(self) -> None:
        self.done += 1
        if self.expected and self.done >= self.expected:
            self.all_done.set()

    async def bulk(self, workflow: str, n: int, tasks_per_run: int) -> dict[str, float]:
        """Trigger `n` runs through the bulk endpoint as fast as it takes them."""
        self._reset(n)
        triggered: dict[str, tuple[int, float]] = {}  # run id → (i, trigger time)
        t0 = time.time()
        for first in range(0, n, BATCH):
            count = min(BATCH, n - first)
            now = time.time()
            body = {"runs": [{"input": {"i": first + k, "t": now}} for k in range(count)]}
            out = await self.r.arequest("POST", f"/workflows/{workflow}/run/bulk", json=body)
            for k, run_id in enumerate(out["run_ids"]):
                triggered[run_id] = (first + k, now)
        return await self._collect(triggered, t0, time.time(), tasks_per_run)

    async def steady(self, workflow: str) -> dict[str, float]:
        """Trigger single runs at a steady RATE_PER_S; each trigger is its own request."""
        schedule = pace(RATE_PER_S, LATENCY_S)
        self._reset(len(schedule))
        triggered: dict[str, tuple[int, float]] = {}
        in_flight = asyncio.Semaphore(64)

        async def trigger(i: int) -> None:
            async with in_flight:
                now = time.time()
                out = await self.r.arequest(
                    "POST", f"/workflows/{workflow}/run", json={"input": {"i": i, "t": now}}
                )
                triggered[out["run_id"]] = (i, now)

        loop = asyncio.get_running_loop()
        t0 = time.time()
        base = loop.time()
        async with asyncio.TaskGroup() as tg:
            for i, offset in enumerate(schedule):
                delay = base + offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tg.create_task(trigger(i))
        return await self._collect(triggered, t0, time.time(), 1)

    async def _collect(
        self, triggered: dict[str, tuple[int, float]], t0: float, sent: float, tasks_per_run: int
    ) -> dict[str, float]:
        """Wait until every run succeeded; derive throughput and latencies."""
        n = len(triggered)
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        # Wait in-process first: polling Postgres hard would steal CPU from the system measured.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_done.wait(), WAIT_TIMEOUT_S)
        while True:
            finished = {
                run_id: at.timestamp()
                for run_id, at in (await runs.finished(self.pool, triggered, t0)).items()
            }
            if len(finished) >= n or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if len(finished) < n:
            raise RuntimeError(f"ratchet: only {len(finished)} of {n} runs succeeded in time")
        start_ms = [(self.starts[i] - t) * 1000 for i, t in triggered.values() if i in self.starts]
        result_ms = [(finished[rid] - t) * 1000 for rid, (_, t) in triggered.items()]
        return summarize(
            runs=n, tasks_per_run=tasks_per_run, t0=t0, end=max(finished.values()),
            start_ms=start_ms, result_ms=result_ms, triggers_sent=sent,
        )


# ------------------------------------------------------------------------------ Celery


class CeleryWorker:
    """`celery -A bench.celery_app worker --pool=solo` as a subprocess with its own log."""

    def __init__(self, redis_url: str, log_dir: str) -> None:
        self.redis_url = redis_url
        self.log_path = Path(log_dir) / "celery-worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
            "--pool=solo", "--concurrency=1", "--prefetch-multiplier=4",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel=WARNING", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h",
        ]
        env = {**os.environ, "BENCH_REDIS_URL": self.redis_url, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def stop(self) -> None:
        from tools import devstack

        if self.proc is not None:
            devstack.terminate_pid(self.proc.pid, 15.0)
            self.proc.wait(timeout=5)
            self.proc = None


class ResultWatcher:
    """Sees Celery results arrive, from a thread, while the client is still triggering.

    Celery's own `join` only starts once every trigger was sent, which would charge the
    trigger loop to trigger→result. This polls the result keys in trigger order instead (results
    of a solo worker arrive nearly in order), a small window at a time, so it adds little load.
    """

    WINDOW = 64
    # Poll fast only while few results are outstanding (the steady workload, where 2 ms matters);
    # with a backlog, results wait seconds anyway and fast polling would slow the triggering
    # thread (same process, one GIL) by about a third.
    FAST_INTERVAL_S = 0.002
    SLOW_INTERVAL_S = 0.02
    FEW = 8

    def __init__(self, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(f"{redis_url}/1")
        self.keys: list[bytes] = []  # appended by the triggering thread, read here
        self.arrived: dict[int, tuple[float, dict[str, Any]]] = {}
        self.expected = -1
        self.error: BaseException | None = None
        self._low = 0
        self._thread = threading.Thread(target=self._run, name="celery-results", daemon=True)
        self._thread.start()

    def add(self, key: bytes) -> None:
        self.keys.append(key)

    def _window(self) -> list[int]:
        while self._low in self.arrived:
            self._low += 1
        out: list[int] = []
        i, n = self._low, len(self.keys)
        while i < n and len(out) < self.WINDOW:
            if i not in self.arrived:
                out.append(i)
            i += 1
        return out

    def _run(self) -> None:
        try:
            while len(self.arrived) != self.expected:
                idx = self._window()
                values = self.client.mget([self.keys[i] for i in idx]) if idx else []
                now = time.time()
                for i, raw in zip(idx, values, strict=True):
                    if raw is None:
                        continue
                    meta = json.loads(raw)
                    if meta.get("status") != "SUCCESS":
                        raise RuntimeError(f"celery task failed: {meta}")
                    self.arrived[i] = (now, meta["result"])
                few = len(idx) <= self.FEW
                time.sleep(self.FAST_INTERVAL_S if few else self.SLOW_INTERVAL_S)
        except BaseException as exc:
            self.error = exc

    def wait(self, expected: int, timeout_s: float) -> dict[int, tuple[float, dict[str, Any]]]:
        self.expected = expected
        self._thread.join(timeout_s)
        self.client.close()
        if self.error is not None:
            raise self.error
        if self._thread.is_alive():
            raise TimeoutError(f"celery: {len(self.arrived)} of {expected} results in time")
        return self.arrived


class CelerySide:
    """The three workloads through Celery (`mod` is bench.celery_app, configured)."""

    def __init__(self, mod: Any, redis_url: str) -> None:
        self.mod = mod
        self.redis_url = redis_url

    @classmethod
    @contextlib.contextmanager
    def session(cls) -> Iterator[dict[str, Callable[[], Row]]]:
        """Start a private Redis and a solo worker, yield the workloads, stop both."""
        from bench import celery_app

        with celery_app.PrivateRedis() as redis, tempfile.TemporaryDirectory() as logs:
            celery_app.configure(redis.url)
            worker = CeleryWorker(redis.url, logs)
            worker.start()
            try:
                # The first result also tells us the worker is up and consuming.
                celery_app.noop.delay(-1, time.time()).get(timeout=60)
                celery_app.step.delay(i=-1, t=time.time()).get(timeout=60)
                side = cls(celery_app, redis.url)
                yield {
                    "noop": lambda: side.noop(N_NOOP),
                    "chain": lambda: side.chains(N_CHAINS),
                    "latency": side.steady,
                }
            except BaseException:
                sys.stderr.write(worker.log_path.read_text(errors="replace")[-4000:])
                raise
            finally:
                worker.stop()
                celery_app.app.close()

    def _measure(
        self, n: int, tasks_per_run: int, send: Callable[[int, float], Any],
        offsets: list[float] | None = None,
    ) -> dict[str, float]:
        """Trigger `n` runs (paced by `offsets` when given) and watch their results."""
        watcher = ResultWatcher(self.redis_url)
        key_for = self.mod.app.backend.get_key_for_task
        triggers: list[float] = []
        t0 = time.time()
        base = time.monotonic()
        for i in range(n):
            if offsets is not None:
                delay = base + offsets[i] - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            now = time.time()
            result = send(i, now)
            triggers.append(now)
            watcher.add(key_for(result.id))
        sent = time.time()
        arrived = watcher.wait(n, WAIT_TIMEOUT_S)
        start_ms, result_ms = [], []
        for i, trigger in enumerate(triggers):
            at, value = arrived[i]
            if tasks_per_run > 1 and value.get("steps") != tasks_per_run:
                raise RuntimeError(f"celery chain ended after {value.get('steps')} steps")
            start_ms.append((float(value["start"]) - trigger) * 1000)
            result_ms.append((at - trigger) * 1000)
        return summarize(
            runs=n, tasks_per_run=tasks_per_run, t0=t0,
            end=max(at for at, _ in arrived.values()), start_ms=start_ms, result_ms=result_ms,
            triggers_sent=sent,
        )

    def noop(self, n: int) -> dict[str, float]:
        return self._measure(n, 1, lambda i, now: self.mod.noop.apply_async((i, now)))

    def chains(self, n: int) -> dict[str, float]:
        from celery import chain

        def send(i: int, now: float) -> Any:
            step = self.mod.step
            return chain(step.s(i=i, t=now), step.s(), step.s()).apply_async()

        return self._measure(n, CHAIN_STEPS, send)

    def steady(self) -> dict[str, float]:
        offsets = pace(RATE_PER_S, LATENCY_S)
        return self._measure(
            len(offsets), 1, lambda i, now: self.mod.noop.apply_async((i, now)), offsets
        )


# ------------------------------------------------------------------------------ report

WORKLOADS = {
    "noop": f"(a) {N_NOOP:,} no-op tasks",
    "chain": f"(b) {N_CHAINS:,} 3-step chains",
    "latency": f"(c) steady {RATE_PER_S}/s for {LATENCY_S}s",
}


def build_report(
    ratchet: dict[str, dict[str, float]], celery: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The results JSON: headline keys first, then every workload in full."""
    workloads: dict[str, Any] = {}
    for key, label in WORKLOADS.items():
        ours, theirs = ratchet.get(key, {}), celery.get(key, {})
        workloads[key] = {
            "label": label,
            "ratchet": ours,
            "celery": theirs,
            "ratio_tasks_per_s": ratio(ours.get("tasks_per_s", 0.0), theirs.get("tasks_per_s", 0.0)),
        }
    noop_r, noop_c = ratchet.get("noop", {}), celery.get("noop", {})
    lat_r, lat_c = ratchet.get("latency", {}), celery.get("latency", {})
    nan = float("nan")
    return {
        "ratchet_tasks_per_s": noop_r.get("tasks_per_s", nan),
        "celery_tasks_per_s": noop_c.get("tasks_per_s", nan),
        "ratio": ratio(noop_r.get("tasks_per_s", 0.0), noop_c.get("tasks_per_s", 0.0)),
        "ratchet_start_p50_ms": lat_r.get("start_p50_ms", nan),
        "ratchet_start_p95_ms": lat_r.get("start_p95_ms", nan),
        "ratchet_start_p99_ms": lat_r.get("start_p99_ms", nan),
        "celery_start_p50_ms": lat_c.get("start_p50_ms", nan),
        "celery_start_p95_ms": lat_c.get("start_p95_ms", nan),
        "celery_start_p99_ms": lat_c.get("start_p99_ms", nan),
        "workloads": workloads,
    }


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table: per workload, one row per system and a ratio row."""
    head = (
        f"{'workload':<30} {'system':<8} {'tasks/s':>9} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"
        f" {'sent s':>7} {'done s':>7}"
    )
    lines = [
        head,
        "p50/p95/p99: trigger->start; sent/done: seconds until the last trigger returned / the"
        " last result; ratio: tasks/s Ratchet / Celery",
        "-" * len(head),
    ]
    for detail in report["workloads"].values():
        label = detail["label"]
        for system in ("ratchet", "celery"):
            row = detail[system]
            if not row:
                continue
            lines.append(
                f"{label:<30} {system:<8} {row['tasks_per_s']:>9.1f} {row['start_p50_ms']:>9.2f}"
                f" {row['start_p95_ms']:>9.2f} {row['start_p99_ms']:>9.2f}"
                f" {row['trigger_s']:>7.1f} {row['elapsed_s']:>7.1f}"
            )
            label = ""
        r = detail["ratio_tasks_per_s"]
        lines.append(f"{'':<30} {'ratio':<8} {f'{r:.2f}x' if r == r else 'n/a':>9}")
    return "\n".join(lines)


def without_nan(value: Any) -> Any:
    """NaN → None, so the JSON stays valid for strict parsers."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    return value


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


async def run_interleaved(systems: set[str]) -> tuple[dict[str, Row], dict[str, Row]]:
    """Each workload on Ratchet, then on Celery, before the next workload.

    Interleaving keeps both systems of a pair under similar background load; the machine is
    shared and its load moves by the minute. Before every measurement the Ratchet stack is let
    settle (its replicator catches up on the burst just sent, the outbox drains), so neither
    system is measured while Ratchet's background work from the previous workload still runs;
    the time that took is reported as `settle_s` on the row measured next.
    """
    ratchet: dict[str, Row] = {}
    celery: dict[str, Row] = {}
    side = RatchetSide() if "ratchet" in systems else None
    async with contextlib.AsyncExitStack() as stack:
        ours = await stack.enter_async_context(side.session()) if side is not None else {}
        theirs = stack.enter_context(CelerySide.session()) if "celery" in systems else {}

        async def settle() -> float:
            return await side.quiesce() if side is not None else 0.0

        chosen = os.environ.get("COMPARE_WORKLOADS", ",".join(WORKLOADS)).split(",")
        unknown = set(chosen) - set(WORKLOADS)
        if unknown:
            raise SystemExit(f"COMPARE_WORKLOADS: unknown {sorted(unknown)}; known {list(WORKLOADS)}")
        for key, label in WORKLOADS.items():
            if key not in chosen:
                continue
            if key in ours:
                settled = await settle()
                print(f"bench-compare: {label} on ratchet (load {os.getloadavg()[0]:.2f})", flush=True)
                ratchet[key] = {**await ours[key](), "settle_s": settled}
            if key in theirs:
                settled = await settle()
                print(f"bench-compare: {label} on celery (load {os.getloadavg()[0]:.2f})", flush=True)
                # A thread keeps the Ratchet worker's loop (idle now) answering its heartbeats.
                celery[key] = {**await asyncio.to_thread(theirs[key]), "settle_s": settled}
    return ratchet, celery


def main() -> None:
    systems = {s.strip() for s in os.environ.get("COMPARE_SYSTEMS", "ratchet,celery").split(",")}
    before = machine()
    ratchet, celery = asyncio.run(run_interleaved(systems))
    report = build_report(ratchet, celery)
    report["config"] = {
        "noop_tasks": N_NOOP, "chains": N_CHAINS, "rate_per_s": RATE_PER_S,
        "latency_s": LATENCY_S, "ratchet_bulk_batch": BATCH, "ratchet_worker_slots": SLOTS,
        "celery": "pool=solo concurrency=1 prefetch_multiplier=4, redis broker + result backend",
    }
    report["machine"] = {"before": before, "after": machine()}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report["timestamp"] = stamp
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"compare-{stamp}.json"
    out.write_text(json.dumps(without_nan(report), indent=2, allow_nan=False) + "\n")
    print(format_table(report))
    print(
        f"headline: ratchet {report['ratchet_tasks_per_s']} vs celery "
        f"{report['celery_tasks_per_s']} no-op tasks/s (ratio {report['ratio']}x); "
        f"ratchet trigger->start at {RATE_PER_S}/s p50 {report['ratchet_start_p50_ms']} ms, "
        f"p99 {report['ratchet_start_p99_ms']} ms"
    )
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
