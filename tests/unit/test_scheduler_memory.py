"""What the scheduler's engine keeps per run, per task, per attempt, per worker and per key is
released when that ends: after N finished runs (retries, concurrency keys per input value,
dynamic rate-limit keys, durable waits, child-less DAGs) every structure is empty, or holds
only what a live worker or an API-defined limit needs."""

from __future__ import annotations

import json

from libs.common.messages import DurableStep, TaskError, TaskReport, TriggerRun, WorkerInfo
from libs.common.specs import ConcurrencySpec, RateLimitSpec, TaskSpec, WorkflowSpec
from services.scheduler.engine import Engine
from services.scheduler.engine.admission.ratelimit import SWEEP_MS
from services.scheduler.model import TaskStatus

NOW = 1_000_000
N = 300

PLAIN = WorkflowSpec(name="plain", tasks=[
    TaskSpec(name="a", retries=1, backoff_base_s=0.01, backoff_max_s=0.01,
             concurrency=[ConcurrencySpec(key="input.k", max_runs=1)],
             rate_limits=[RateLimitSpec(dynamic_key="input.k", limit=1000, per="second")]),
    TaskSpec(name="b", parents=["a"]),
], concurrency=[ConcurrencySpec(key="input.k", max_runs=2)])
DURABLE = WorkflowSpec(name="durable", tasks=[TaskSpec(name="d", durable=True)])
SLEEP = json.dumps({"conds": [{"sleep_ms": 10}]}, separators=(",", ":")).encode()


def _worker(wid: str, actions: list[str], now: int) -> WorkerInfo:
    return WorkerInfo(worker_id=wid, tenant="t", name=wid, dispatcher_id="d", actions=actions,
                      slots=20, durable_slots=100, heartbeat_ms=now, session=f"s-{wid}",
                      registered_ms=now)


def _step(eng: Engine, now: int) -> None:
    """Every attempt a worker holds reports started, then the first attempt of "a" fails and
    every other one completes; durable tasks wait once (a 10 ms sleep) before completing."""
    eng.begin(now)
    eng.fire_timers()
    for task in list(eng.tasks.values()):
        if task.status not in (TaskStatus.ASSIGNED, TaskStatus.RUNNING) or task.worker_id is None:
            continue
        report = TaskReport(kind="started", task_id=task.id, attempt=task.attempt,
                            worker_id=task.worker_id, ts_ms=now)
        if task.status == TaskStatus.ASSIGNED:
            eng.report("t", report)
        if task.name == "a" and task.attempt == 0:
            eng.report("t", TaskReport(kind="failed", task_id=task.id, attempt=0,
                                       worker_id=task.worker_id, ts_ms=now,
                                       error=TaskError(type="E", message="once")))
        elif task.name == "d" and not eng._m.durable.logs.get(task.id):
            eng.report("t", TaskReport(
                kind="wait", task_id=task.id, attempt=task.attempt, worker_id=task.worker_id,
                ts_ms=now, step=DurableStep(position=0, kind="wait", spec=SLEEP)))
        elif task.name == "d" and task.id in {w[0] for q in eng._m.durable.wakes.values()
                                               for w in q}:
            continue  # woken: completes on the next step
        else:
            eng.report("t", TaskReport(kind="completed", task_id=task.id, attempt=task.attempt,
                                       worker_id=task.worker_id, ts_ms=now, output=b"{}"))
    eng.finish()


def _run_all(eng: Engine, now: int) -> int:
    for _ in range(200):
        if not eng.runs:
            return now
        now += 50
        _step(eng, now)
    raise AssertionError(f"{len(eng.runs)} runs never finished")


def _sizes(eng: Engine) -> dict[str, int]:
    m = eng._m
    durable = m.durable
    gate = m.gate
    return {
        "runs": len(eng.runs),
        "tasks": len(eng.tasks),
        "executing": len(gate.executing),
        "exec_by_run": len(gate.exec_by_run),
        "run_holders": len(gate.run_holders),
        "resolved_inputs": len(gate.resolved_inputs),
        "sems": len(gate.conc.sems),
        "entities": len(gate.conc.entities),
        "durable.logs": len(durable.logs),
        "durable.parked": sum(len(v) for v in durable.parked.values()),
        "durable.wakes": sum(len(v) for v in durable.wakes.values()),
        "durable.run_waiters": len(durable.run_waiters),
        "inflight": sum(len(w.inflight) for w in m.assigner.workers.values()),
        "orphan_inflight": len(m.assigner._orphan_inflight),
        "queues": len(m.assigner._queues),
        **{f"limits.{k}": v for k, v in gate.limits.size().items()},
    }


def test_finished_runs_leave_nothing_behind() -> None:
    eng = Engine()
    eng.begin(NOW)
    eng.worker_seen(_worker("w1", ["plain:a", "plain:b", "durable:d"], NOW))
    for i in range(N):
        eng.trigger("t", TriggerRun(run_id=f"p{i}", workflow="plain", version_id="v",
                                    input=json.dumps({"k": f"user-{i}"}).encode()), PLAIN)
        eng.trigger("t", TriggerRun(run_id=f"d{i}", workflow="durable", version_id="v",
                                    input=b"{}"), DURABLE)
    eng.finish()
    now = _run_all(eng, NOW)
    # Rate-limit windows of keys whose starts aged out go at the next sweep.
    now += SWEEP_MS + 1
    _step(eng, now)
    sizes = _sizes(eng)
    assert {k: v for k, v in sizes.items() if v} == {}, sizes
    # The timer heap is compacted in proportion to live tasks (none): a fixed floor.
    assert len(eng._m.timers) <= 2 * 4 * N


def test_a_gone_worker_leaves_nothing_behind() -> None:
    eng = Engine()
    eng.begin(NOW)
    eng.worker_seen(_worker("w1", ["durable:d"], NOW))
    for i in range(50):
        eng.trigger("t", TriggerRun(run_id=f"d{i}", workflow="durable", version_id="v",
                                    input=b"{}"), DURABLE)
    eng.finish()
    _step(eng, NOW + 50)  # every attempt started and parked in a wait
    eng.begin(NOW + 100)
    eng.worker_lost("w1")
    eng.finish()
    m = eng._m
    assert "w1" not in m.assigner.workers
    assert not m.durable.parked.get("w1") and not m.durable.wakes.get("w1")
    assert "w1" not in m.durable.restored
    # The requeued attempts finish on a new worker, then nothing is left.
    eng.begin(NOW + 150)
    eng.worker_seen(_worker("w2", ["durable:d"], NOW + 150))
    eng.finish()
    _run_all(eng, NOW + 150)
    sizes = _sizes(eng)
    assert {k: v for k, v in sizes.items() if v} == {}, sizes


def test_api_defined_limits_stay_and_idle_dynamic_keys_go() -> None:
    from services.scheduler.engine.admission.ratelimit import RateLimiter
    from services.scheduler.records import LimitDef, Need

    limiter = RateLimiter()
    limiter.define("t", "static", LimitDef(10, 1000, None))
    for i in range(1000):
        need = Need(f"user-{i}", 1, LimitDef(5, 1000, None))
        limiter.remember_dynamic("t", need)
        assert limiter.try_take("t", [need], NOW, f"task-{i}", 0) == (None, 0)
    limiter.try_take("t", [Need("static", 1, None)], NOW, "s", 0)
    assert limiter.size()["windows"] == 1001
    limiter.sweep(NOW + 500)  # within the window: all kept
    assert limiter.size()["windows"] == 1001
    limiter.sweep(NOW + 1000)
    assert limiter.size() == {"defs": 1, "windows": 0, "buckets": 0, "lines": 0, "wake": 0}
