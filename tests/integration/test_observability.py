"""Observability end to end: one run is one connected trace, /metrics reports the run, and
the worker's logs carry the task's ids."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from conftest import Stack, eventually
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from ratchet import Context, Ratchet

from libs.common import telemetry
from libs.common.partitions import partition_of
from libs.common.service import HealthServer, Service

pytestmark = pytest.mark.asyncio(loop_scope="session")

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for one test, into memory; the global provider can be set once per
    process, so the processor stays installed and tracing is switched off afterwards."""
    if not getattr(_EXPORTER, "_ratchet_installed", False):
        telemetry.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _EXPORTER._ratchet_installed = True  # type: ignore[attr-defined]
    telemetry.set_enabled(True)
    _EXPORTER.clear()
    try:
        yield _EXPORTER
    finally:
        telemetry.set_enabled(False)
        _EXPORTER.clear()


def _of_run(exporter: InMemorySpanExporter, run_id: str) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans()
        if (s.attributes or {}).get("ratchet.run_id") == run_id
    ]


async def test_one_run_is_one_connected_trace(
    client: Ratchet, start_worker, spans: InMemorySpanExporter
) -> None:
    wf = client.workflow("traced")

    @wf.task()
    async def first(input: dict, ctx: Context) -> dict:
        return {"n": input["n"] + 1}

    @wf.task(parents=[first])
    def second(input: dict, ctx: Context) -> dict:  # sync: runs in a thread
        return {"n": ctx.parent_output(first)["n"] * 2}

    @wf.task(parents=[second])
    async def third(input: dict, ctx: Context) -> dict:
        return {"n": ctx.parent_output(second)["n"] + 3}

    await start_worker("w-traced", workflows=[wf], slots=2)
    ref = await wf.aio_run_no_wait({"n": 1})
    assert (await ref.aio_result(30))["third"] == {"n": 7}

    def scope(s: ReadableSpan) -> str:
        return s.instrumentation_scope.name if s.instrumentation_scope else ""

    async def complete() -> bool:
        got = _of_run(spans, ref.run_id)
        return (
            sum(scope(s) == "ratchet.worker" for s in got) == 3
            and sum(scope(s) == "ratchet.scheduler" and s.name == "task" for s in got) == 3
            and any(s.name == "run.finish" for s in got)
        )

    await eventually(complete, timeout_s=10)
    run_spans = _of_run(spans, ref.run_id)
    trace_ids = {s.context.trace_id for s in run_spans}
    assert len(trace_ids) == 1, "every span of the run belongs to one trace"
    trace_id = trace_ids.pop()
    in_trace = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    assert {s.context.span_id for s in in_trace} >= {s.context.span_id for s in run_spans}

    # One tree: a single root (the API's trigger span), every other parent present.
    by_id = {s.context.span_id: s for s in in_trace}
    roots = [s for s in in_trace if s.parent is None]
    assert [(scope(r), r.name) for r in roots] == [("ratchet.api", "run.trigger")]
    for s in in_trace:
        if s.parent is not None:
            assert s.parent.span_id in by_id, f"{scope(s)}/{s.name} has a parent outside the trace"

    assert {scope(s) for s in in_trace} == {
        "ratchet.api", "ratchet.scheduler", "ratchet.dispatcher", "ratchet.worker"
    }
    # The hops chain: api → scheduler → dispatcher → worker, for every task.
    for work in (s for s in in_trace if scope(s) == "ratchet.worker"):
        assert work.parent is not None
        dispatch = by_id[work.parent.span_id]
        assert (scope(dispatch), dispatch.name) == ("ratchet.dispatcher", "task.dispatch")
        assert dispatch.parent is not None
        created = by_id[dispatch.parent.span_id]
        assert (scope(created), created.name) == ("ratchet.scheduler", "run.create")
        assert created.parent is not None and created.parent.span_id == roots[0].context.span_id
    worker_tasks = sorted(
        str((s.attributes or {}).get("ratchet.task_name"))
        for s in in_trace if scope(s) == "ratchet.worker"
    )
    assert worker_tasks == ["first", "second", "third"]


async def test_failed_task_span_carries_the_error(
    client: Ratchet, start_worker, spans: InMemorySpanExporter
) -> None:
    @client.task(name="breaks")
    async def breaks(input: dict, ctx: Context) -> dict:
        raise ValueError("no good")

    await start_worker("w-breaks", workflows=[breaks], slots=1)
    ref = await breaks.aio_run_no_wait({})
    with pytest.raises(Exception, match="no good"):
        await ref.aio_result(30)

    async def settled() -> bool:
        return any(s.name == "run.finish" for s in _of_run(spans, ref.run_id))

    await eventually(settled, timeout_s=10)
    got = _of_run(spans, ref.run_id)
    worker = [s for s in got if s.name == "task.run"]
    assert len(worker) == 1 and not worker[0].status.is_ok
    assert any(e.name == "exception" for e in worker[0].events)
    finish = next(s for s in got if s.name == "run.finish")
    assert (finish.attributes or {}).get("ratchet.status") == "FAILED"


async def test_trigger_continues_the_callers_trace(
    stack: Stack, client: Ratchet, start_worker, spans: InMemorySpanExporter
) -> None:
    @client.task(name="continued")
    async def continued(input: dict, ctx: Context) -> dict:
        return {}

    await start_worker("w-continued", workflows=[continued], slots=1)
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {
        "authorization": f"Bearer {client.config.token}",
        "traceparent": f"00-{caller_trace}-{caller_span}-01",
    }
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers) as http:
        resp = await http.post("/workflows/continued/run", json={"input": {}})
    assert resp.status_code == 202, resp.text
    run_id = resp.json()["run_id"]

    async def finished() -> bool:
        return any(s.name == "task.run" for s in _of_run(spans, run_id))

    await eventually(finished, timeout_s=15)
    got = _of_run(spans, run_id)
    assert {f"{s.context.trace_id:032x}" for s in got} == {caller_trace}
    trigger = next(s for s in got if s.name == "run.trigger")
    assert trigger.parent is not None and f"{trigger.parent.span_id:016x}" == caller_span


async def _scrape(service: Service) -> str:
    health = HealthServer(service, "127.0.0.1", 0)
    await health.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
        writer.close()
    finally:
        await health.stop()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    return body.decode()


def _value(text: str, name: str, labels: str = "") -> float:
    """The sample `name{labels}` of a Prometheus text exposition (labels as written)."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{labels}}} not exposed"
    return float(match.group(1))


async def test_metrics_endpoint_reports_the_run(
    stack: Stack, client: Ratchet, start_worker, tenant: str
) -> None:
    wf = client.workflow("metered")

    @wf.task()
    async def a(input: dict, ctx: Context) -> dict:
        return {}

    @wf.task(parents=[a])
    async def b(input: dict, ctx: Context) -> dict:
        return {}

    await start_worker("w-metered", workflows=[wf], slots=3)
    await wf.aio_run({}, timeout_s=30)

    text = await _scrape(stack.scheduler)
    assert _value(text, "ratchet_scheduler_task_transitions_total", 'state="SUCCEEDED"') >= 2
    assert _value(text, "ratchet_scheduler_task_transitions_total", 'state="RUNNING"') >= 2
    assert _value(text, "ratchet_scheduler_trigger_to_start_seconds_count") >= 2
    assert _value(text, "ratchet_scheduler_task_duration_seconds_count", 'status="SUCCEEDED"') >= 2
    assert _value(text, "ratchet_scheduler_run_duration_seconds_count", 'status="SUCCEEDED"') >= 1
    assert _value(text, "ratchet_scheduler_worker_slots", 'kind="capacity"') >= 3
    assert _value(text, "ratchet_scheduler_worker_slots", 'kind="in_use"') >= 0
    assert _value(text, "ratchet_scheduler_queue_depth") >= 0
    assert _value(text, "ratchet_scheduler_tasks", 'state="QUEUED"') >= 0
    assert _value(text, "ratchet_scheduler_batches_total") >= 1
    assert _value(text, "ratchet_api_runs_triggered_total") >= 1
    # The consumers of the tenant's scheduler partition (docs/scaling.md).
    p = partition_of(tenant, stack.scheduler._partition_count)
    assert _value(text, "ratchet_consumer_pending_messages", f'consumer="scheduler-reports-{p}"') >= 0
    assert _value(text, "ratchet_consumer_ack_pending_messages", f'consumer="scheduler-cmd-{p}"') >= 0

    text = await _scrape(stack.dispatcher)
    assert _value(text, "ratchet_dispatcher_assignments_total") >= 2
    assert _value(text, "ratchet_dispatcher_task_reports_total") >= 4  # started + completed
    assert _value(text, "ratchet_dispatcher_connected_workers") >= 1
    assert _value(text, "ratchet_dispatcher_worker_slots") >= 3
    durable = f"dispatcher-{stack.dispatcher.dispatcher_id}"
    assert _value(text, "ratchet_consumer_pending_messages", f'consumer="{durable}"') >= 0


async def test_worker_logs_carry_task_ids(
    client: Ratchet, start_worker, caplog: pytest.LogCaptureFixture
) -> None:
    user_log = logging.getLogger("tests.user_task")

    @client.task(name="chatty")
    def chatty(input: dict, ctx: Context) -> dict:  # sync: logs from the executor thread
        user_log.warning("working on it")
        return {}

    @client.task(name="grumpy", retries=0)
    async def grumpy(input: dict, ctx: Context) -> dict:
        raise RuntimeError("nope")

    caplog.set_level(logging.INFO)
    worker = await start_worker("w-logs", workflows=[chatty, grumpy], slots=2)
    ok = await chatty.aio_run_no_wait({})
    await ok.aio_result(30)
    bad = await grumpy.aio_run_no_wait({})
    with pytest.raises(Exception, match="nope"):
        await bad.aio_result(30)

    mine = next(r for r in caplog.records if r.getMessage() == "working on it")
    assert (mine.tenant, mine.workflow, mine.run_id, mine.attempt) == (  # type: ignore[attr-defined]
        worker.tenant, "chatty", ok.run_id, 0,
    )
    assert mine.task_id  # type: ignore[attr-defined]
    failed = next(r for r in caplog.records if r.getMessage().startswith("task failed"))
    assert failed.run_id == bad.run_id  # type: ignore[attr-defined]
    assert failed.task_name == "grumpy"  # type: ignore[attr-defined]
    assert failed.tenant == worker.tenant  # type: ignore[attr-defined]
