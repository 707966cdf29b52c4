"""Property tests for the task state machine: any interleaving of duplicated, reordered and
late reports, timer firings and worker losses leaves a valid state and never double-counts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.messages import TaskError, TaskReport, TriggerRun, WorkerInfo
from libs.common.specs import TaskSpec, WorkflowSpec
from services.scheduler.engine import Engine
from services.scheduler.model import IN_FLIGHT, RUN_TERMINAL, TERMINAL, TaskStatus

SPEC = WorkflowSpec(
    name="wf",
    tasks=[
        TaskSpec(name="a", retries=2, backoff_base_s=0.01, backoff_max_s=0.01, execution_timeout_s=5),
        TaskSpec(name="b", parents=["a"], retries=1, backoff_base_s=0.01, backoff_max_s=0.01),
    ],
)
WORKERS = ["w1", "w2"]

event = st.one_of(
    st.tuples(
        st.just("report"),
        st.sampled_from(["a", "b"]),
        st.integers(0, 4),  # attempt (often stale or from the future)
        st.sampled_from(["started", "completed", "failed", "cancelled", "refresh"]),
        st.sampled_from(WORKERS),
        st.booleans(),  # non-retryable
    ),
    st.tuples(st.just("tick"), st.integers(0, 10_000)),
    st.tuples(st.just("lose"), st.sampled_from(WORKERS)),
    st.tuples(st.just("join"), st.sampled_from(WORKERS)),
    st.tuples(st.just("current"), st.sampled_from(["a", "b"]), st.sampled_from(["completed", "failed", "started"])),
)


def _worker(wid: str, now: int) -> WorkerInfo:
    return WorkerInfo(
        worker_id=wid, tenant="t", name=wid, dispatcher_id="d", actions=["wf:a", "wf:b"],
        slots=1, heartbeat_ms=now,
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(event, max_size=60))
def test_any_interleaving_keeps_invariants(events: list[tuple]) -> None:
    eng = Engine()
    now = 1_000_000
    eng.begin(now)
    eng.worker_seen(_worker("w1", now))
    eng.trigger("t", TriggerRun(run_id="r1", workflow="wf", version_id="v", input=b"{}"), SPEC)
    history = list(eng.finish().history)
    run = eng.runs["r1"]
    tasks = dict(run.tasks)
    for ev in events:
        eng.begin(now)
        kind = ev[0]
        if kind == "report":
            _, name, attempt, rkind, wid, nonretry = ev
            task = tasks[name]
            err = TaskError(type="E", message="x", non_retryable=nonretry) if rkind == "failed" else None
            eng.report("t", TaskReport(kind=rkind, task_id=task.id, attempt=attempt, worker_id=wid,
                                       ts_ms=now, output=b"1", error=err, refresh_ms=100))
        elif kind == "current":
            # A report for the task's current attempt from the worker holding it.
            _, name, rkind = ev
            task = tasks[name]
            if task.worker_id is not None:
                err = TaskError(type="E", message="x") if rkind == "failed" else None
                eng.report("t", TaskReport(kind=rkind, task_id=task.id, attempt=task.attempt,
                                           worker_id=task.worker_id, ts_ms=now, output=b"1", error=err))
        elif kind == "tick":
            now += ev[1]
            eng.now_ms = now
            eng.fire_timers()
        elif kind == "lose":
            eng.worker_lost(ev[1])
        elif kind == "join":
            eng.worker_seen(_worker(ev[1], now))
        history.extend(eng.finish().history)
        _check(eng, tasks, run)

    succeeded = [h for h in history if h.kind == "task.succeeded"]
    per_task = {}
    for h in succeeded:
        per_task[h.task_id] = per_task.get(h.task_id, 0) + 1
    assert all(n == 1 for n in per_task.values()), per_task
    finals = [h for h in history if h.kind in ("run.succeeded", "run.failed", "run.cancelled")]
    assert len(finals) <= 1


def _check(eng: Engine, tasks: dict, run) -> None:
    for worker in eng.assigner.workers.values():
        assert len(worker.inflight) <= worker.info.slots
    for task in tasks.values():
        assert isinstance(task.status, TaskStatus)
        if task.status in IN_FLIGHT:
            assert task.worker_id is not None
        if task.status == TaskStatus.SUCCEEDED:
            assert task.output is not None
    if tasks["b"].status not in (TaskStatus.PENDING,) and tasks["b"].status not in TERMINAL:
        assert tasks["a"].status == TaskStatus.SUCCEEDED
    if run.status in RUN_TERMINAL:
        assert all(t.status in TERMINAL for t in run.main_tasks())
