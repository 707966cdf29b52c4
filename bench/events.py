"""`make bench-events`: events through the matcher to run triggers, and CEL cost.

Set-up: one tenant, 100 workflows each listening to its own key, 10 filters per workflow
(1,000 filters over 100 keys). Events are published straight to NATS (pipelined), matched
by an in-process MatcherService, and counted from the outcome records the matcher publishes
after each batch's run triggers were acked by the CMD stream, i.e. end to end through the
matcher. Two workloads:

- scoped: each workflow's 10 filters have 10 different scopes; an event carries one scope,
  so it is evaluated against 1 filter (the usual multi-team layout);
- unscoped: the 10 filters share no scope; every event is evaluated against all 10.

CEL p50/p99 are per evaluation, timed over the 1,000 compiled filters on sample events.
Env: BENCH_EVENTS (default 10000).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from nats.js import api as jsapi

from libs.common import db, jetstream, subjects, tenants
from libs.common.match_messages import EVENT_MATCHES_DECODER, match_subject
from libs.common.settings import load_settings
from libs.common.specs import TaskSpec, WorkflowSpec, content_hash
from libs.common.subjects import Header, Stream
from services.matcher.cel import compile_filter, to_cel
from services.matcher.service import MatcherService

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
    await tenants.ensure_tenant(pool, tenant)
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
                "INSERT INTO workflows (tenant_id, name, latest_version_id) VALUES ($1, $2, $3)",
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


async def _run_workload(settings: Any, pool: Any, js: Any, scoped: bool) -> dict[str, float]:
    tenant = f"bench-evt-{uuid.uuid4().hex[:8]}"
    await _setup(pool, tenant, scoped)
    matcher = MatcherService(settings, durable=f"bench-{tenant}",
                             filter_subject=f"evt.{tenant}.>", batch_size=500)
    await matcher.start()
    seen: set[str] = set()
    triggers = 0
    evaluations = 0
    done = asyncio.Event()

    async def on_record(msg: Any) -> None:
        nonlocal triggers, evaluations
        record = EVENT_MATCHES_DECODER.decode(msg.data)
        if record.event_id not in seen:
            seen.add(record.event_id)
            evaluations += sum(1 for o in record.outcomes if o.filter_id)
            triggers += sum(1 for o in record.outcomes if o.outcome == "matched")
            if len(seen) >= N_EVENTS:
                done.set()

    sub = await js.subscribe(match_subject(tenant), stream=Stream.TASK.value, cb=on_record,
                             config=jsapi.ConsumerConfig(ack_policy=jsapi.AckPolicy.NONE))
    try:
        # Warm the rule cache (one load + 1,000 compiles) outside the timed window.
        warm = time.perf_counter()
        await matcher.rules.rules_for([tenant])  # type: ignore[union-attr]
        warm_s = time.perf_counter() - warm
        t0 = time.perf_counter()
        futures = []
        for i in range(N_EVENTS):
            headers = {Header.EVENT_ID.value: f"e{i}",
                       Header.METADATA.value: '{"source": "web"}'}
            if scoped:
                headers[Header.SCOPE.value] = f"s{i % FILTERS_PER_KEY}"
            futures.append(await js.publish_async(
                subjects.evt(tenant, f"key.{i % N_KEYS}"), msgspec.json.encode(_payload(i)),
                headers=headers))
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        published_s = time.perf_counter() - t0
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - t0
    finally:
        await sub.unsubscribe()
        await matcher.stop()
        await js.delete_consumer(Stream.EVT.value, f"bench-{tenant}")
    return {
        "events": N_EVENTS, "events_per_s": N_EVENTS / elapsed, "elapsed_s": elapsed,
        "publish_per_s": N_EVENTS / published_s, "triggers": triggers,
        "evaluations_per_event": evaluations / N_EVENTS, "rules_load_s": warm_s,
    }


def _cel_timings(expressions: list[str]) -> list[float]:
    programs = [(compile_filter(e), to_cel({"tier": "gold"})) for e in expressions]
    samples: list[float] = []
    for i in range(20):
        base = {"input": to_cel(_payload(i)), "metadata": to_cel({"source": "web"}),
                "event_key": to_cel(f"key.{i}")}
        for program, payload in programs:
            base["payload"] = payload
            t = time.perf_counter_ns()
            program.evaluate(base)
            samples.append((time.perf_counter_ns() - t) / 1000)
    return samples


async def main() -> dict[str, Any]:
    settings = load_settings()
    nc = await jetstream.connect(settings, "bench-events")
    js = nc.jetstream()
    await jetstream.provision(js, settings)
    await db.migrate(settings.database_url)
    pool = await db.create_pool(settings.database_url, max_size=4)
    try:
        try:
            await js.consumer_info(Stream.EVT.value, "matcher")
            print("note: the stack's matcher is running too and also matches these events")
        except Exception:
            pass
        compile_t = time.perf_counter()
        expressions = [EXPRESSIONS[j % len(EXPRESSIONS)].format(j=j)
                       for _ in range(N_KEYS) for j in range(FILTERS_PER_KEY)]
        samples = _cel_timings(expressions)
        compile_ms = (time.perf_counter() - compile_t) * 1000 / len(expressions)
        scoped = await _run_workload(settings, pool, js, scoped=True)
        unscoped = await _run_workload(settings, pool, js, scoped=False)
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
    }


def run() -> None:
    stats = asyncio.run(main())
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
