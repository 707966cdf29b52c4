"""The engine's durable-task accounting, without servers: parking frees the regular slot,
durable_slots bound the parked, wake-ups wait for a free slot, a lost worker's parked
attempts are requeued with their log, and a different wait at a position is refused."""

from __future__ import annotations

import json

from libs.common.messages import (
    DISPATCH_DECODER,
    DispatchBatch,
    DurableStep,
    TaskReport,
    TriggerRun,
    WorkerInfo,
)
from libs.common.specs import TaskSpec, WorkflowSpec
from services.scheduler.effects import Effects
from services.scheduler.engine import Engine
from services.scheduler.model import TaskStatus

SPEC = WorkflowSpec(name="wf", tasks=[TaskSpec(name="d", durable=True)])
SLEEP = json.dumps({"conds": [{"sleep_ms": 1000}]}, separators=(",", ":")).encode()
NOW = 1_000_000


def _engine(slots: int = 1, durable_slots: int = 1000, runs: int = 3) -> Engine:
    eng = Engine()
    eng.begin(NOW)
    eng.worker_seen(WorkerInfo(worker_id="w1", tenant="t", name="w1", dispatcher_id="d",
                               actions=["wf:d"], slots=slots, durable_slots=durable_slots,
                               heartbeat_ms=NOW))
    for i in range(runs):
        eng.trigger("t", TriggerRun(run_id=f"r{i}", workflow="wf", version_id="v", input=b"{}"),
                    SPEC)
    eng.finish()
    return eng


def _running(eng: Engine) -> list[str]:
    return [t.id for t in eng.tasks.values() if t.status in (TaskStatus.ASSIGNED, TaskStatus.RUNNING)]


def _report(eng: Engine, task_id: str, kind: str, spec: bytes = SLEEP, attempt: int = 0,
            position: int = 0) -> DispatchBatch:
    eng.begin(eng.now_ms)
    step = DurableStep(position=position, kind="wait", spec=spec) if kind == "wait" else None
    eng.report("t", TaskReport(kind=kind, task_id=task_id, attempt=attempt, worker_id="w1",
                               ts_ms=eng.now_ms, step=step, output=b"{}"))
    return _dispatched(eng.finish())


def _dispatched(fx: Effects) -> DispatchBatch:
    """Everything the batch sends to dispatchers, merged."""
    merged = DispatchBatch()
    for o in fx.outbox:
        if o.subject.startswith("dsp."):
            batch = DISPATCH_DECODER.decode(o.payload)
            merged.assignments.extend(batch.assignments)
            merged.wakes.extend(batch.wakes)
    return merged


def test_a_parked_task_frees_its_slot_and_wakes_when_one_is_free() -> None:
    eng = _engine(slots=1, runs=3)
    first = _running(eng)
    assert len(first) == 1
    _report(eng, first[0], "started")
    out = _report(eng, first[0], "wait")
    assert len(out.assignments) == 1  # its slot went to the next task at once
    second = out.assignments[0].task_id
    _report(eng, second, "started")
    _report(eng, second, "wait")
    # Both asleep, one slot, the third task running: the sleepers wake as slots free up.
    eng.begin(NOW + 1000)
    eng.fire_timers()
    assert _dispatched(eng.finish()).wakes == []  # both slept enough, but no slot is free
    third = next(t for t in _running(eng) if t not in (first[0], second))
    _report(eng, third, "started")
    out = _report(eng, third, "completed")
    assert [w.task_id for w in out.wakes] == [first[0]]  # one free slot: one wake-up
    assert json.loads(out.wakes[0].result) == {"index": 0, "payload": None}


def test_durable_slots_bound_the_parked() -> None:
    eng = _engine(slots=1, durable_slots=1, runs=3)
    first = _running(eng)[0]
    _report(eng, first, "started")
    second = _report(eng, first, "wait").assignments[0].task_id
    _report(eng, second, "started")
    out = _report(eng, second, "wait")
    assert out.assignments == []  # no durable slot left: the second keeps its regular slot


def test_lost_worker_requeues_parked_attempts_with_their_log() -> None:
    eng = _engine(slots=1, runs=1)
    task_id = _running(eng)[0]
    _report(eng, task_id, "started")
    _report(eng, task_id, "wait")
    eng.begin(NOW + 10)
    eng.worker_lost("w1")
    eng.worker_seen(WorkerInfo(worker_id="w2", tenant="t", name="w2", dispatcher_id="d",
                               actions=["wf:d"], slots=1, heartbeat_ms=NOW))
    (assignment,) = _dispatched(eng.finish()).assignments
    assert assignment.attempt == 1
    assert [(s.position, s.spec, s.done) for s in assignment.durable_log] == [(0, SLEEP, False)]


def test_a_different_wait_at_a_recorded_position_is_refused() -> None:
    eng = _engine(slots=1, runs=1)
    task_id = _running(eng)[0]
    _report(eng, task_id, "started")
    _report(eng, task_id, "wait")
    other = json.dumps({"conds": [{"sleep_ms": 5}]}, separators=(",", ":")).encode()
    out = _report(eng, task_id, "wait", spec=other)
    assert json.loads(out.wakes[0].result)["error"] == "NonDeterminism"
    assert "position 0" in json.loads(out.wakes[0].result)["message"]


def test_after_a_restart_a_wait_that_ends_before_its_worker_shows_up_still_wakes_it() -> None:
    eng = _engine(slots=1, runs=1)
    task_id = _running(eng)[0]
    _report(eng, task_id, "started")
    _report(eng, task_id, "wait")
    entries = [e for log in eng._m.durable.logs.values() for e in log.values()]
    # A new scheduler: runs and logs read back; the worker is not in the registry yet.
    fresh = Engine()
    fresh.begin(NOW + 5)
    fresh.adopt(eng.runs["r0"])
    for e in entries:
        fresh.restore_durable(e)
    fresh.finish()
    fresh.begin(NOW + 2000)
    fresh.fire_timers()  # the sleep ends now, before the worker is seen
    assert _dispatched(fresh.finish()).wakes == []
    fresh.begin(NOW + 2100)
    fresh.worker_seen(WorkerInfo(worker_id="w1", tenant="t", name="w1", dispatcher_id="d",
                                 actions=["wf:d"], slots=1, heartbeat_ms=NOW + 2100))
    out = _dispatched(fresh.finish())
    assert [(w.task_id, w.attempt) for w in out.wakes] == [(task_id, 0)]
