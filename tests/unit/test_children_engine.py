"""The engine's side of child runs: the cancel cascade and children triggered too late."""

from __future__ import annotations

from libs.common import subjects
from libs.common.messages import (
    COMMAND_DECODER,
    CancelRun,
    CancelRuns,
    TaskReport,
    TriggerRun,
    WorkerInfo,
)
from libs.common.specs import TaskSpec, WorkflowSpec
from services.scheduler.engine import Engine
from services.scheduler.engine._children import CASCADE_CHUNK
from services.scheduler.model import RUN_TERMINAL, RunStatus

SPEC = WorkflowSpec(name="wf", tasks=[TaskSpec(name="a")])
NOW = 1_000_000


def _trigger(run_id: str, parent: str | None = None) -> TriggerRun:
    return TriggerRun(
        run_id=run_id, workflow="wf", version_id="v", input=b"{}", source="child" if parent else "api",
        parent_run_id=parent, parent_task_id=f"{parent}-a" if parent else None,
        parent_task="a" if parent else None, depth=1 if parent else 0,
    )


def _cascades(eng: Engine) -> list[CancelRuns]:
    fx = eng.finish()
    out = []
    for o in fx.outbox:
        if o.subject == subjects.cmd("t", "run.cancel"):
            msg = COMMAND_DECODER.decode(o.payload)
            assert isinstance(msg, CancelRuns)
            out.append(msg)
    return out


def test_a_cancelled_parent_sends_its_active_children_a_cancel() -> None:
    eng = Engine()
    eng.begin(NOW)
    eng.trigger("t", _trigger("p"), SPEC)
    for i in range(3):
        eng.trigger("t", _trigger(f"c{i}", parent="p"), SPEC)
    eng.finish()
    assert eng.children_of("p") == {"c0", "c1", "c2"}
    assert eng.runs["c0"].parent_run_id == "p" and eng.runs["c0"].depth == 1

    eng.begin(NOW + 1)
    eng.cancel("t", CancelRun(run_id="c1"))  # already over: not part of the cascade
    eng.cancel("t", CancelRun(run_id="p"))
    sent = _cascades(eng)
    assert [m.run_ids for m in sent] == [["c0", "c2"]]
    assert "parent run p was cancelled" in sent[0].reason
    assert eng.children_of("p") == set()

    eng.begin(NOW + 2)
    for msg in sent:
        for cmd in msg.each():
            eng.cancel("t", cmd)
    eng.finish()
    assert "c0" not in eng.runs and "c2" not in eng.runs  # finished and left memory


def test_a_parent_that_succeeds_leaves_its_children_running() -> None:
    eng = Engine()
    eng.begin(NOW)
    eng.worker_seen(WorkerInfo(worker_id="w", tenant="t", name="w", dispatcher_id="d",
                               actions=["wf:a"], slots=10, heartbeat_ms=NOW))
    eng.trigger("t", _trigger("p"), SPEC)
    eng.trigger("t", _trigger("c", parent="p"), SPEC)
    eng.finish()
    task = eng.runs["p"].tasks["a"]
    eng.begin(NOW + 1)
    for kind in ("started", "completed"):
        eng.report("t", TaskReport(kind=kind, task_id=task.id, attempt=0, worker_id="w",
                                   ts_ms=NOW + 1))
    assert _cascades(eng) == []
    assert "p" not in eng.runs
    assert eng.runs["c"].status not in RUN_TERMINAL
    assert eng.children_of("p") == {"c"}  # until the child ends: a replayed parent finds it


def test_a_child_triggered_after_its_parent_was_cancelled_is_cancelled_at_once() -> None:
    eng = Engine()
    eng.begin(NOW)
    eng.trigger("t", _trigger("p"), SPEC)
    eng.cancel("t", CancelRun(run_id="p"))
    eng.trigger("t", _trigger("late", parent="p"), SPEC)  # same batch: parent still in memory
    eng.finish()
    assert "late" not in eng.runs

    eng.begin(NOW + 1)  # the parent left memory: the service looked its status up
    eng.note_parent_statuses({"p": "CANCELLED"})
    eng.trigger("t", _trigger("later", parent="p"), SPEC)
    fx = eng.finish()
    assert fx.runs["later"].status == RunStatus.CANCELLED


def test_a_cascade_is_chunked() -> None:
    eng = Engine()
    eng.begin(NOW)
    eng.trigger("t", _trigger("p"), SPEC)
    n = CASCADE_CHUNK * 2 + 5
    for i in range(n):
        eng.trigger("t", _trigger(f"c{i:05d}", parent="p"), SPEC)
    eng.finish()
    eng.begin(NOW + 1)
    eng.cancel("t", CancelRun(run_id="p"))
    sent = _cascades(eng)
    assert [len(m.run_ids) for m in sent] == [CASCADE_CHUNK, CASCADE_CHUNK, 5]
    assert len({r for m in sent for r in m.run_ids}) == n
