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


def test_undeliverable_assignment_pauses_the_worker_until_it_registers_again() -> None:
    """A dispatcher that cannot deliver (worker not connected there yet) reports WorkerLost.
    The task is requeued, and the worker gets nothing more until a new registration: before,
    the same task bounced between the two every batch until the worker reconnected."""
    one = WorkflowSpec(name="wf", tasks=[TaskSpec(name="a")])
    eng = Engine()
    now = 1_000_000
    eng.begin(now)
    first = _worker("w1", now)
    first.session, first.registered_ms = "s1", now - 10
    eng.worker_seen(first)
    eng.trigger("t", TriggerRun(run_id="r1", workflow="wf", version_id="v", input=b"{}"), one)
    eng.finish()
    task = next(iter(eng.runs["r1"].tasks.values()))
    assert task.status == TaskStatus.ASSIGNED and task.attempt == 0

    for step in range(3):  # undeliverable, then batches with the worker still registered
        eng.begin(now + step + 1)
        if step == 0:
            eng.report("t", TaskReport(kind="failed", task_id=task.id, attempt=0, worker_id="w1",
                                       ts_ms=now, error=TaskError(type="WorkerLost", message="x")))
        eng.worker_seen(first)  # registry resync: same registration
        eng.finish()
        assert task.status == TaskStatus.QUEUED and task.attempt == 1

    eng.begin(now + 10)
    again = _worker("w1", now + 10)
    again.session, again.registered_ms = "s2", now + 9
    eng.worker_seen(again)
    eng.finish()
    assert task.status == TaskStatus.ASSIGNED and task.attempt == 1


def test_undeliverable_report_about_an_earlier_registration_is_ignored() -> None:
    one = WorkflowSpec(name="wf", tasks=[TaskSpec(name="a"), TaskSpec(name="b")])
    eng = Engine()
    now = 1_000_000
    eng.begin(now)
    info = _worker("w1", now)
    info.slots, info.session, info.registered_ms = 2, "s1", now - 10
    eng.worker_seen(info)
    eng.trigger("t", TriggerRun(run_id="r1", workflow="wf", version_id="v", input=b"{}"), one)
    eng.finish()
    a, b = eng.runs["r1"].tasks["a"], eng.runs["r1"].tasks["b"]
    eng.begin(now + 5)
    newer = _worker("w1", now + 5)
    newer.slots, newer.session, newer.registered_ms = 2, "s2", now + 5  # after the assignment
    newer.holding = [(a.id, 0), (b.id, 0)]  # so the registration itself requeues nothing
    eng.worker_seen(newer)
    eng.report("t", TaskReport(kind="failed", task_id=a.id, attempt=0, worker_id="w1",
                               ts_ms=now, error=TaskError(type="WorkerLost", message="x")))
    eng.finish()
    assert a.status == TaskStatus.ASSIGNED and a.attempt == 1  # requeued and sent again
    assert b.status == TaskStatus.ASSIGNED and b.attempt == 0
