"""`make bench-events`: events through the matcher to run triggers, and CEL cost.

Set-up: one tenant of its own per workload (its runs, which no worker serves, are cancelled
at the end: bench/cleanup.py), 100 workflows each listening to its own key, 10 filters per workflow
(1,000 filters over 100 keys). The matcher runs as its own process, started the way
production starts it (`run_service`, uvloop), with a durable consumer of its own that reads
only the bench tenant's events. This process publishes the events straight to NATS
(pipelined, acked batches of 1,000, with the msg-id the API would set) and reads the outcome records the matcher publishes after each batch's run
triggers were acked by the CMD stream. events/s = events / (first publish → last outcome
record), i.e. end to end through the matcher. Rule loading (1,000 compiles) happens on a
warm-up event before the clock starts. Two workloads:

- scoped: each workflow's 10 filters have 10 different scopes; an event carries one scope,
  so it is evaluated against 1 filter (the usual multi-team layout);
- unscoped: the 10 filters share no scope; every event is evaluated against all 10.

The rest of the stack keeps running and consumes what the matcher produces (the scheduler
creates the triggered runs, the replicator projects events and outcomes), as it would in
production — except the stack's own matcher, which would match these events too and halve
the CPU left for the one measured: it is stopped for the run (SIGTERM to the pid in
`$RATCHET_RUN_DIR/pids/matcher.pid`) and started again afterwards with `tools.devstack up`.
If a matcher still consumes EVT, the result says so (`stack_matcher_running`).

CEL p50/p99 are per evaluation, timed over the 1,000 compiled filters on sample events,
with the per-event bindings the matcher uses.
Env: BENCH_EVENTS (default 10000).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.js import api as jsapi

from bench.cleanup import bench_tenant, cancel_leftovers
from libs.common import db, jetstream, subjects
from libs.common.cel import Bindings, compile_filter, to_cel
from libs.common.jetstream import Outgoing
from libs.common.match_messages import MATCH_BATCH_DECODER
from libs.common.publish import AckedPublisher
from libs.common.service import run_service
from libs.common.settings import load_settings
from libs.common.specs import TaskSpec, WorkflowSpec, content_hash
from libs.common.subjects import Header, Stream
from services.matcher.service import MatcherService
from tools import devstack

N_EVENTS = int(os.environ.get("BENCH_EVENTS", "10000"))
N_KEYS = 100
FILTERS_PER_KEY = 10

EXPRESSIONS = [
    "input.user != 'bot' && input.n > {j}",
    "payload.tier == 'gold' && input.amount >= {j}0",
    "event_key.endsWith('{j}') || metadata.source == 'api'",
    "input.tags.exists(t, t == 'tag{j}')",
    "size(input.user) > 2 && input.country in ['de', 'fr', 'us'] && input.n % 10 == {j}",
]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def _payload(i: int) -> dict[str, Any]:
    return {"user": f"u{i}", "n": i % 20, "amount": i % 300, "tags": ["tag1", "tag3"],
            "country": "de"}


async def _setup(pool: Any, tenant: str, scoped: bool) -> list[str]:
    expressions: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        for k in range(N_KEYS):
            spec = WorkflowSpec(name=f"wf{k}", tasks=[TaskSpec(name="t")], on_events=[f"key.{k}"])
            vid = f"wv_{tenant}_{k}"
            await conn.execute(
                "INSERT INTO workflow_versions (id, tenant_id, name, hash, spec)"
                " VALUES ($1, $2, $3, $4, $5::jsonb)",
                vid, tenant, spec.name, content_hash(spec), msgspec.json.encode(spec).decode(),
            )
            await conn.execute(
                "INSERT INTO workflows (tenant_id, name, current_version_id) VALUES ($1, $2, $3)",
                tenant, spec.name, vid,
            )
            rows = []
            for j in range(FILTERS_PER_KEY):
                expr = EXPRESSIONS[j % len(EXPRESSIONS)].format(j=j)
                expressions.append(expr)
                rows.append((tenant, f"f{k}_{j}", spec.name, f"s{j}" if scoped else None, expr,
                             json.dumps({"tier": "gold" if j % 2 else "silver"})))
            await conn.executemany(
                "INSERT INTO filters (tenant_id, id, workflow, scope, expression, payload)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb)", rows,
            )
    return expressions


def _serve_matcher(durable: str, filter_subject: str) -> None:
    """Body of the matcher child process: the production entry point, one durable of its own."""
    run_service(lambda settings: MatcherService(settings, durable=durable,
                                                filter_subject=filter_subject, batch_size=500))


def _spawn_matcher(durable: str, filter_subject: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.events", "--serve-matcher", durable, filter_subject],
            stdout=log, stderr=subprocess.STDOUT,
        )


async def _run_workload(settings: Any, pool: Any, js: Any, publisher: AckedPublisher,
                        scoped: bool, log_path: Path) -> dict[str, float]:
    tenant, _token = await bench_tenant(pool, "bench-evt")
    durable = f"bench-{tenant}"
    await _setup(pool, tenant, scoped)
    seen: set[str] = set()
    triggers = 0
    warm_triggers = 0
    evaluations = 0
    warmed = asyncio.Event()
    done = asyncio.Event()
    last_record = 0.0

    async def on_record(msg: Any) -> None:
        nonlocal triggers, warm_triggers, evaluations, last_record
        for record in MATCH_BATCH_DECODER.decode(msg.data).records:
            if record.event_id == "warm-up":
                warm_triggers = sum(1 for o in record.outcomes if o.outcome == "matched")
                warmed.set()
            elif record.event_id not in seen:
                seen.add(record.event_id)
                evaluations += sum(1 for o in record.outcomes if o.filter_id)
                triggers += sum(1 for o in record.outcomes if o.outcome == "matched")
                if len(seen) >= N_EVENTS:
                    last_record = time.perf_counter()
                    done.set()

    def headers_for(event_id: str, i: int) -> dict[str, str]:
        headers = {Header.EVENT_ID.value: event_id, Header.METADATA.value: '{"source": "web"}'}
        if scoped:
            headers[Header.SCOPE.value] = f"s{i % FILTERS_PER_KEY}"
        return headers

    sub = await js.subscribe(subjects.task_match(tenant), stream=Stream.TASK.value, cb=on_record,
                             config=jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE))
    child = _spawn_matcher(durable, f"evt.{tenant}.>", log_path)
    try:
        # Rule loading (one query + 1,000 compiles) happens on the first event: outside the clock.
        warm = time.perf_counter()
        await js.publish(subjects.evt(tenant, "key.0"), msgspec.json.encode(_payload(0)),
                         headers=headers_for("warm-up", 0))
        await _wait(warmed, child, 120)
        warm_s = time.perf_counter() - warm
        # Events carry the msg-id the API would give them. Published through the matcher's
        # own acked publisher: on one 2-core box, nats-py's publish_async would spend CPU
        # that production publishers spend on their own machines.
        events = [
            Outgoing(subjects.evt(tenant, f"key.{i % N_KEYS}"), msgspec.json.encode(_payload(i)),
                     f"evt:{tenant}:e{i}", headers_for(f"e{i}", i))
            for i in range(N_EVENTS)
        ]
        t0 = time.perf_counter()
        for start in range(0, N_EVENTS, 1000):
            await publisher.publish_batch(events[start:start + 1000])
        published_s = time.perf_counter() - t0
        await _wait(done, child, 600)
        elapsed = last_record - t0
    finally:
        await sub.unsubscribe()
        child.terminate()
        try:
            await asyncio.to_thread(child.wait, 30)
        except subprocess.TimeoutExpired:
            child.kill()
        await js.delete_consumer(Stream.EVT.value, durable)
        # No worker serves these workflows: every triggered run would sit queued until its
        # schedule timeout, a storm for whoever measures next.
        left = await cancel_leftovers(pool, js, tenant, expected_runs=warm_triggers + triggers)
        print(f"cleanup: cancelled {left} queued runs of {tenant}")
    return {
        "events": N_EVENTS, "events_per_s": N_EVENTS / elapsed, "elapsed_s": elapsed,
        "publish_per_s": N_EVENTS / published_s, "triggers": triggers,
        "evaluations_per_event": evaluations / N_EVENTS, "rules_load_s": warm_s,
    }


async def _wait(event: asyncio.Event, child: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not event.is_set():
        if child.poll() is not None:
            raise RuntimeError(f"matcher process exited with {child.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError("matcher did not finish in time")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), 0.5)


def _cel_timings(expressions: list[str]) -> list[float]:
    programs = [(compile_filter(e), to_cel({"tier": "gold"})) for e in expressions]
    samples: list[float] = []
    for i in range(20):
        bindings = Bindings({"input": to_cel(_payload(i)), "metadata": to_cel({"source": "web"}),
                             "event_key": to_cel(f"key.{i}")})
        for program, payload in programs:
            bindings.bind("payload", payload)
            t = time.perf_counter_ns()
            program.evaluate(bindings)
            samples.append((time.perf_counter_ns() - t) / 1000)
    return samples


async def main() -> dict[str, Any]:
    settings = load_settings()
    nc = await jetstream.connect(settings, "bench-events")
    js = nc.jetstream()
    await jetstream.provision(js, settings)
    await db.migrate(settings.database_url)
    pool = await db.create_pool(settings.database_url, max_size=4)
    stack_matcher = await _stack_matcher_running(js)
    if stack_matcher:
        print("note: the stack's matcher is running too and also matches these events; "
              "stop it for a number that measures one matcher")
    log_path = Path(tempfile.gettempdir()) / f"bench-events-matcher-{os.getpid()}.log"
    try:
        compile_t = time.perf_counter()
        expressions = [EXPRESSIONS[j % len(EXPRESSIONS)].format(j=j)
                       for _ in range(N_KEYS) for j in range(FILTERS_PER_KEY)]
        samples = _cel_timings(expressions)
        compile_ms = (time.perf_counter() - compile_t) * 1000 / len(expressions)
        publisher = AckedPublisher(nc)
        await publisher.start()
        scoped = await _run_workload(settings, pool, js, publisher, scoped=True,
                                     log_path=log_path)
        unscoped = await _run_workload(settings, pool, js, publisher, scoped=False,
                                       log_path=log_path)
        await publisher.stop()
    finally:
        await pool.close()
        await nc.drain()
    return {
        "events_per_s": round(scoped["events_per_s"], 1),
        "cel_p50_us": round(pct(samples, 50), 1),
        "cel_p99_us": round(pct(samples, 99), 1),
        "cel_mean_us": round(sum(samples) / len(samples), 1),
        "cel_compile_ms_incl_eval": round(compile_ms, 2),
        "filters": N_KEYS * FILTERS_PER_KEY,
        "keys": N_KEYS,
        "scoped": {k: round(v, 3) for k, v in scoped.items()},
        "unscoped": {k: round(v, 3) for k, v in unscoped.items()},
        "events_per_s_unscoped": round(unscoped["events_per_s"], 1),
        "matcher": "own process (uvloop), durable per workload",
        "stack_matcher_running": stack_matcher,
        "cpus": os.cpu_count(),
    }


async def _stack_matcher_running(js: Any) -> bool:
    try:
        info = await js.consumer_info(Stream.EVT.value, "matcher")
    except Exception:
        return False
    # A pull consumer with a client attached has pull requests waiting (or work in flight).
    return bool(info.num_waiting or info.num_ack_pending)


def _stop_stack_matcher() -> bool:
    """Stop the local stack's matcher (orderly, SIGTERM); True when one was running."""
    run_dir = Path(os.environ.get("RATCHET_RUN_DIR") or Path(__file__).parents[1] / ".run")
    pid = devstack.read_pid_file(run_dir / "pids" / "matcher.pid")
    if pid is None or not devstack.pid_alive(pid):
        return False
    devstack.terminate_pid(pid)
    return True


def run() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-matcher":
        _serve_matcher(sys.argv[2], sys.argv[3])
        return
    stopped = _stop_stack_matcher()
    try:
        stats = asyncio.run(main())
    finally:
        if stopped:
            subprocess.run([sys.executable, "-m", "tools.devstack", "up"], check=False,
                           cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path("bench/results") / f"events-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=2) + "\n")
    print(f"events/s (1 filter evaluated per event, scoped): {stats['events_per_s']}")
    print(f"events/s (10 filters evaluated per event):       {stats['events_per_s_unscoped']}")
    print(f"CEL per evaluation: p50 {stats['cel_p50_us']} us, p99 {stats['cel_p99_us']} us")
    print(f"wrote {out}")


if __name__ == "__main__":
    run()
