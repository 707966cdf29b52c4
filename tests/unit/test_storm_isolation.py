"""One tenant's storm (mass schedule timeouts, a bulk cancel, a trigger flood) delays another
tenant's work by at most one scheduler batch.

Asserted on batches — which batch a task was assigned in, how much one batch took in — never
on wall time.
"""

from __future__ import annotations

import json

import pytest

from libs.common.messages import CancelRun, TaskError, TaskReport, TriggerRun, WorkerInfo
from libs.common.specs import TaskSpec, WorkflowSpec
from services.scheduler.engine import TIMER_BATCH, Engine
from services.scheduler.intake import Intake, TimerTurn, Work
from services.scheduler.model import TaskStatus

T0 = 1_000_000
STORM = 3 * TIMER_BATCH + 123

SLOW = WorkflowSpec(name="slow", tasks=[TaskSpec(name="t", schedule_timeout_s=1.0)])
QUICK = WorkflowSpec(name="quick", tasks=[TaskSpec(name="t", retries=1, backoff_base_s=0.01,
                                                   backoff_max_s=0.01)])


def _trigger(eng: Engine, tenant: str, spec: WorkflowSpec, run_id: str) -> None:
    eng.trigger(tenant, TriggerRun(run_id=run_id, workflow=spec.name, version_id="v",
                                   input=json.dumps({}).encode()), spec)


def test_a_timeout_storm_does_not_hold_back_another_tenants_retry() -> None:
    eng = Engine()
    eng.begin(T0)
    # Tenant a: thousands of queued tasks no worker serves, all timing out at T0 + 1 s.
    for i in range(STORM):
        _trigger(eng, "a", SLOW, f"a{i}")
    eng.finish()
    # Tenant b: one task that fails just before a's storm; its retry comes due 7-10 ms after it.
    eng.begin(T0 + 900)
    eng.worker_seen(WorkerInfo(worker_id="wb", tenant="b", name="wb", dispatcher_id="d",
                               actions=["quick:t"], slots=1, labels={}, heartbeat_ms=T0))
    _trigger(eng, "b", QUICK, "b1")
    eng.finish()
    task_b = eng.runs["b1"].tasks["t"]
    assert task_b.status == TaskStatus.ASSIGNED
    eng.begin(T0 + 999)
    eng.report("b", TaskReport(kind="failed", task_id=task_b.id, attempt=task_b.attempt,
                               worker_id="wb", ts_ms=T0 + 999,
                               error=TaskError(type="Boom", message="once")))
    eng.finish()
    assert task_b.status == TaskStatus.QUEUED and task_b.attempt == 1

    # Well past both deadlines: a's storm and b's retry are all due together.
    batches: list[int] = []  # a's tasks timed out per batch
    assigned_in: int | None = None
    timed_out = 0
    for batch in range(1, 20):
        eng.begin(T0 + 1100)
        eng.fire_timers()
        fx = eng.finish()
        now_out = sum(1 for r in fx.finished_runs if r.tenant == "a")
        batches.append(now_out)
        timed_out += now_out
        if assigned_in is None and task_b.status == TaskStatus.ASSIGNED:
            assigned_in = batch
        if timed_out == STORM:
            break
    assert assigned_in == 1  # b's retry was not queued behind a's storm
    assert timed_out == STORM  # and a's storm was served in full
    assert max(batches) <= TIMER_BATCH  # no batch took in more than its share
    assert len(batches) >= STORM // TIMER_BATCH


def test_due_timers_alternate_between_tenants() -> None:
    eng = Engine()
    eng.begin(T0)
    for i in range(40):
        _trigger(eng, "a", SLOW, f"a{i}")
    for i in range(2):
        _trigger(eng, "c", SLOW, f"c{i}")
    eng.finish()
    eng.begin(T0 + 2000)
    eng.fire_timers(limit=4)
    fx = eng.finish()
    # four timers fired: two of each tenant, although a's 40 are all older than c's
    assert sorted(r.tenant for r in fx.finished_runs) == ["a", "a", "c", "c"]


def _cmds(tenant: str, n: int, prefix: str) -> list[tuple[str, object]]:
    return [(tenant, CancelRun(run_id=f"{prefix}{i}")) for i in range(n)]


async def test_a_bulk_cancel_is_applied_in_slices_and_others_go_first() -> None:
    intake = Intake(budget=100)
    storm = Work("cmd", _cmds("a", 350, "a"))
    other = Work("cmd", [("b", TriggerRun(run_id="b1", workflow="w", version_id="v", input=b"{}"))])
    reports = Work("report", _cmds("a", 3, "r"))  # reports are never held back
    taken = intake.take([storm, other, reports])
    assert ("b", "b1") in {(t, getattr(m, "run_id", "")) for _, t, m in taken}
    assert sum(1 for w, _, _ in taken if w is storm) == 100
    assert sum(1 for w, _, _ in taken if w is reports) == 3
    done = Intake.completed(taken, [storm, other, reports])
    assert other in done and reports in done and storm not in done

    applied = [m for w, _, m in taken if w is storm]
    batches = 1
    while intake.pending():
        taken = intake.take([])
        applied.extend(m for _, _, m in taken)
        done = Intake.completed(taken, [])
        batches += 1
        assert (storm in done) == (not intake.pending())
    assert batches == 4  # 350 cancels in slices of 100
    # in arrival order: a cancel never overtakes the trigger or cancel before it
    assert [m.run_id for m in applied] == [f"a{i}" for i in range(350)]  # type: ignore[attr-defined]
    assert storm.done is not None and not storm.done.done()  # the service resolves it


async def test_a_failed_batch_hands_back_the_held_works() -> None:
    intake = Intake(budget=10)
    storm = Work("cmd", _cmds("a", 25, "a"))
    intake.take([storm])
    assert intake.drop() == {storm}
    assert not intake.pending()


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Intake(budget=0)



def test_during_a_timeout_storm_batches_with_messages_commit_no_timeouts() -> None:
    """The service's turn-taking (TimerTurn): while a's storm fills batches, every other batch
    that carries b's messages fires no timer, so b's trigger commits without a's timeouts,
    and the storm still ends within twice as many batches as it needs alone."""
    eng = Engine()
    eng.begin(T0)
    for i in range(STORM):
        _trigger(eng, "a", SLOW, f"a{i}")
    eng.worker_seen(WorkerInfo(worker_id="wb", tenant="b", name="wb", dispatcher_id="d",
                               actions=["quick:t"], slots=10_000, labels={}, heartbeat_ms=T0))
    eng.finish()

    turn = TimerTurn(TIMER_BATCH)
    timed_out = 0
    skipped = 0
    batches = 0
    while timed_out < STORM:
        batches += 1
        assert batches <= 2 * (STORM // TIMER_BATCH + 1)
        eng.begin(T0 + 1100 + batches)
        _trigger(eng, "b", QUICK, f"b{batches}")  # b has a message in every batch
        fired = turn.fires(carries_messages=True)
        if fired:
            turn.fired(eng.fire_timers())
        fx = eng.finish()
        now_out = sum(1 for r in fx.finished_runs if r.tenant == "a")
        timed_out += now_out
        assert eng.runs[f"b{batches}"].tasks["t"].status == TaskStatus.ASSIGNED
        assert now_out <= TIMER_BATCH
        if not fired:
            skipped += 1
            assert now_out == 0
    assert skipped >= STORM // TIMER_BATCH - 1  # b's batches went without a's timeouts
    # once the storm is over, a batch with messages fires what is due again
    assert turn.fires(carries_messages=True)


def test_timer_turns_skip_at_most_every_other_batch() -> None:
    turn = TimerTurn(limit=10)
    assert turn.fires(carries_messages=True)  # no storm: timers fire with messages
    turn.fired(3)
    assert turn.fires(carries_messages=True)
    turn.fired(10)  # a full share: a storm
    assert turn.fires(carries_messages=False)  # nothing else waits: timers go on
    turn.fired(10)
    assert not turn.fires(carries_messages=True)  # messages go alone
    assert turn.fires(carries_messages=True)  # then timers again, messages or not
    turn.fired(10)
    assert not turn.fires(carries_messages=True)
    assert turn.fires(carries_messages=False)
    turn.fired(4)  # the storm is over
    assert turn.fires(carries_messages=True)


def _worker(tenant: str, action: str, slots: int) -> WorkerInfo:
    return WorkerInfo(worker_id=f"w{tenant}", tenant=tenant, name=f"w{tenant}", dispatcher_id="d",
                      actions=[action], slots=slots, labels={}, heartbeat_ms=T0)


def test_timers_of_finished_tasks_do_not_use_up_a_batch() -> None:
    """After a burst the heap is mostly entries of tasks that finished: they are skipped
    without counting against the batch's share, so a live timeout behind them still fires."""
    eng = Engine()
    eng.begin(T0)
    eng.worker_seen(_worker("a", "quick:t", 1000))
    burst = 3 * TIMER_BATCH
    for i in range(burst):
        _trigger(eng, "a", QUICK, f"a{i}")
    # No worker serves c's task: it times out after 350 s, after a's entries came due.
    late = WorkflowSpec(name="late", tasks=[TaskSpec(name="t", schedule_timeout_s=350.0)])
    _trigger(eng, "c", late, "c1")
    eng.finish()
    eng.begin(T0 + 10)
    for i in range(burst):
        task = eng.runs[f"a{i}"].tasks["t"]
        eng.report("a", TaskReport(kind="completed", task_id=task.id, attempt=task.attempt,
                                   worker_id="wa", ts_ms=T0 + 10, output=b"1"))
    eng.finish()
    # Past every timeout of a's tasks (execution and schedule, 300 s by default) and c's.
    eng.begin(T0 + 400_000)
    assert eng.fire_timers(limit=1) == 1
    fx = eng.finish()
    assert [r.id for r in fx.finished_runs] == ["c1"]


def test_a_refreshed_deadline_keeps_its_stored_timer() -> None:
    """The entry of the deadline before a refresh comes due first: it neither times the task
    out nor deletes the stored row, which now holds the refreshed deadline."""
    spec = WorkflowSpec(name="long", tasks=[TaskSpec(name="t", execution_timeout_s=1.0)])
    eng = Engine()
    eng.begin(T0)
    eng.worker_seen(_worker("a", "long:t", 1))
    _trigger(eng, "a", spec, "r1")
    eng.finish()
    task = eng.runs["r1"].tasks["t"]
    eng.begin(T0 + 500)
    eng.report("a", TaskReport(kind="started", task_id=task.id, attempt=0, worker_id="wa",
                               ts_ms=T0 + 500))
    eng.report("a", TaskReport(kind="refresh", task_id=task.id, attempt=0, worker_id="wa",
                               ts_ms=T0 + 500, refresh_ms=5_000))
    fx = eng.finish()
    key = ("a", task.id, "exec")
    assert key in fx.timers_put

    eng.begin(T0 + 2_000)  # the first deadline has passed, the refreshed one has not
    assert eng.fire_timers() == 0
    fx = eng.finish()
    assert key not in fx.timers_del
    assert task.status == TaskStatus.RUNNING

    eng.begin(T0 + 6_000)
    assert eng.fire_timers() == 1
    fx = eng.finish()
    assert key in fx.timers_del
    assert task.status == TaskStatus.TIMED_OUT
