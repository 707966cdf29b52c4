"""The public SDK surface is pinned, and definitions fail at import time."""

import json
import subprocess
import sys

import pytest
import ratchet
from ratchet import Context, Ratchet, WorkflowDefinitionError
from ratchet.workflow import _run_body


def test_public_names_are_pinned() -> None:
    assert set(ratchet.__all__) == {
        "ApiError", "Concurrency", "Context", "DesiredLabel", "NonRetryable", "RateLimit",
        "Ratchet", "RatchetError", "RunFailed", "RunRef", "Sticky", "StickyStrategy", "Strategy", "Task",
        "Worker", "Workflow", "WorkflowDefinitionError",
        "DurableContext", "Event", "NonDeterminism", "ParentOutput", "Sleep", "WaitAnyResult",
        "Signal", "Waitpoint",
        "Batch", "Debounce",
    }


def test_bad_signature_fails_at_definition() -> None:
    wf = Ratchet(token="x").workflow("w")
    with pytest.raises(WorkflowDefinitionError):
        @wf.task()
        def bad(input: dict) -> dict:  # type: ignore[type-arg]
            return {}


def test_duplicate_and_foreign_parents_rejected() -> None:
    r = Ratchet(token="x")
    wf, other = r.workflow("a"), r.workflow("b")

    @other.task()
    def x(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {}

    @wf.task()
    def y(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {}

    with pytest.raises(WorkflowDefinitionError):
        wf.task(name="y")(lambda i, c: {})
    with pytest.raises(WorkflowDefinitionError):
        wf.task(parents=[x])(lambda i, c: {})


def test_mock_run_passes_parent_outputs() -> None:
    wf = Ratchet(token="x").workflow("m")

    @wf.task()
    async def first(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {"n": 1}

    @wf.task(parents=[first])
    def second(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {"n": ctx.parent_output(first)["n"] + input["add"]}

    assert first.mock_run({}) == {"n": 1}
    assert second.mock_run({"add": 2}, parent_outputs={"first": {"n": 1}}) == {"n": 3}


def test_a_definition_needs_no_client() -> None:
    wf = ratchet.Workflow("offline")

    @wf.task()
    def only(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {"echo": input["x"]}

    assert wf.spec()["tasks"][0]["name"] == "only"
    assert only.mock_run({"x": 1}) == {"echo": 1}
    # Triggering needs a server; the error says how to get one.
    with pytest.raises(ratchet.RatchetError, match="Ratchet"):
        wf.run_no_wait({"x": 1})


def test_run_body_carries_the_pinned_version() -> None:
    assert _run_body({"a": 1}, None, None, None) == {"input": {"a": 1}}
    assert _run_body(None, 2, {"k": "v"}, "ver-1") == {
        "input": {}, "priority": 2, "metadata": {"k": "v"}, "version_id": "ver-1",
    }


TRACING_WITHOUT_OTEL = """
import asyncio, json, os, sys
sys.modules["opentelemetry"] = None  # as if the optional extra were not installed
from ratchet import _tracing
from ratchet._proto import worker_pb2 as pb

async def main() -> None:
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:4317"
    _tracing.configure_from_env("w")
    traced = pb.Assignment(run_id="r1", task_id="t1", task_name="n", workflow="wf", attempt=2,
                           traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    seen = {}

    async def attempt() -> None:
        seen.update(_tracing.current_ids())
        _tracing.task_failed(ValueError("boom"))

    await _tracing.start_task(attempt(), traced, "ten")
    print(json.dumps(seen))

asyncio.run(main())
"""


def test_tracing_degrades_without_opentelemetry() -> None:
    # A traced assignment still runs, with its ids, when OpenTelemetry is absent.
    proc = subprocess.run([sys.executable, "-c", TRACING_WITHOUT_OTEL], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "tenant": "ten", "workflow": "wf", "run_id": "r1", "task_id": "t1", "task_name": "n",
        "attempt": 2,
    }


def test_durable_and_condition_definitions_fail_at_import_time() -> None:
    wf = Ratchet(token="x").workflow("conds")
    with pytest.raises(ratchet.WorkflowDefinitionError, match="async"):
        wf.durable_task(name="sync")(lambda i, c: {})
    with pytest.raises(ratchet.WorkflowDefinitionError, match="wait_for takes"):
        wf.task(name="bad", wait_for=[ratchet.ParentOutput("input.x > 1")])(lambda i, c: {})

    @wf.task()
    def first(input: dict, ctx: ratchet.Context) -> dict:
        return {}

    @wf.task(parents=[first], wait_for=[ratchet.Sleep(2.5), ratchet.Event("go", "input.ok")],
             skip_if=[ratchet.ParentOutput("input.skip", parent=first)])
    def second(input: dict, ctx: ratchet.Context) -> dict:
        return {}

    spec = second.spec()
    assert spec["wait_for"] == [
        {"kind": "sleep", "sleep_s": 2.5},
        {"kind": "event", "key": "go", "expression": "input.ok", "scope": None},
    ]
    assert spec["skip_if"] == [{"kind": "parent_output", "expression": "input.skip", "parent": "first"}]
    with pytest.raises(ratchet.WorkflowDefinitionError, match="not a parent"):
        wf.task(name="orphan", skip_if=[ratchet.ParentOutput("true", parent=second)])(
            lambda i, c: {})


def test_durable_mock_run_ends_sleeps_at_once() -> None:
    wf = Ratchet(token="x").workflow("mocked")

    @wf.durable_task()
    async def nap(input: dict, ctx: ratchet.DurableContext) -> dict:
        await ctx.aio_sleep_for(3600)
        fired = await ctx.aio_wait_any(ratchet.Event("never"), ratchet.Sleep(60))
        try:
            await ctx.aio_wait_for_event("never", timeout=5)
        except TimeoutError:
            return {"fired": fired.index, "timed_out": True}
        return {}

    assert nap.mock_run({}) == {"fired": 1, "timed_out": True}
