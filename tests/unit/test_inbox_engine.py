"""A run's inbox in the engine, without servers (docs/interaction.md): whatever the
interleaving of signals sent, redelivered and waited for, each wait gets the oldest signal of
its name, each signal is delivered once, and what no wait took is still in the inbox."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.messages import (
    DISPATCH_DECODER,
    MAX_PENDING_SIGNALS,
    DurableStep,
    SignalRun,
    TaskReport,
    TriggerRun,
    WorkerInfo,
)
from libs.common.specs import TaskSpec, WorkflowSpec
from services.scheduler.effects import Effects
from services.scheduler.engine import Engine
from services.scheduler.records import REFUSED, SENT

SPEC = WorkflowSpec(name="wf", tasks=[TaskSpec(name="d", durable=True)])
NOW = 1_000_000
NAMES = ("a", "b")


def _spec(name: str) -> bytes:
    return json.dumps({"conds": [{"signal": name}]}, separators=(",", ":")).encode()


def _wakes(fx: Effects) -> list[tuple[int, bytes]]:
    out = []
    for o in fx.outbox:
        if o.subject.startswith("dsp."):
            out.extend((w.position, w.result) for w in DISPATCH_DECODER.decode(o.payload).wakes)
    return out


class Harness:
    def __init__(self) -> None:
        self.eng = Engine()
        self.eng.begin(NOW)
        self.eng.worker_seen(WorkerInfo(worker_id="w1", tenant="t", name="w1", dispatcher_id="d",
                                        actions=["wf:d"], slots=1, heartbeat_ms=NOW))
        self.eng.trigger("t", TriggerRun(run_id="r", workflow="wf", version_id="v", input=b"{}"),
                         SPEC)
        self.eng.finish()
        (self.task_id,) = self.eng.tasks
        self.position = 0
        self.got: dict[int, dict[str, int]] = {}  # position -> payload delivered there
        self.batch(lambda: self.eng.report("t", TaskReport(
            kind="started", task_id=self.task_id, attempt=0, worker_id="w1", ts_ms=NOW)))

    def batch(self, apply: object) -> None:
        self.eng.begin(NOW)
        apply()  # type: ignore[operator]
        for position, result in _wakes(self.eng.finish()):
            doc = json.loads(result)
            assert position not in self.got, "a wait was woken twice"
            self.got[position] = doc["payload"]

    def send(self, signal_id: str, name: str, n: int) -> None:
        self.batch(lambda: self.eng.signal("t", SignalRun(
            run_id="r", signal_id=signal_id, name=name, payload=json.dumps({"n": n}).encode())))

    def wait(self, name: str) -> int:
        position = self.position
        self.position += 1
        step = DurableStep(position=position, kind="wait", spec=_spec(name))
        self.batch(lambda: self.eng.report("t", TaskReport(
            kind="wait", task_id=self.task_id, attempt=0, worker_id="w1", ts_ms=NOW, step=step)))
        return position


actions = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(NAMES)),
        st.tuples(st.just("resend"), st.sampled_from(NAMES)),
        st.tuples(st.just("wait"), st.sampled_from(NAMES)),
    ),
    max_size=30,
)


@settings(deadline=None)
@given(actions)
def test_each_wait_takes_the_oldest_signal_of_its_name_once(steps: list[tuple[str, str]]) -> None:
    h = Harness()
    queues: dict[str, list[int]] = {n: [] for n in NAMES}  # the model's inbox
    expected: dict[int, int] = {}
    waiting: tuple[int, str] | None = None  # the model's open wait: (position, name)
    sent = 0
    for action, name in steps:
        if action in ("send", "resend"):
            if action == "resend" and sent:
                h.send(f"s{sent - 1}", name, sent - 1)  # a redelivered command: no effect
                continue
            h.send(f"s{sent}", name, sent)
            if waiting is not None and waiting[1] == name:
                expected[waiting[0]] = sent
                waiting = None
            else:
                queues[name].append(sent)
            sent += 1
        elif waiting is None:  # the task's code waits only once its last wait is over
            position = h.wait(name)
            if queues[name]:
                expected[position] = queues[name].pop(0)
            else:
                waiting = (position, name)
    assert {p: v["n"] for p, v in h.got.items()} == expected
    inbox = h.eng._m.inbox.waiting.get("r", [])
    assert sorted(json.loads(i.payload)["n"] for i in inbox) == sorted(
        n for q in queues.values() for n in q)
    assert all(i.status == SENT for i in inbox)


def test_a_full_inbox_refuses_and_a_finished_run_takes_nothing() -> None:
    h = Harness()
    for i in range(MAX_PENDING_SIGNALS + 1):
        h.eng.begin(NOW)
        h.eng.signal("t", SignalRun(run_id="r", signal_id=f"s{i}", name="a", payload=b"1"))
        writes = h.eng.finish().durable
        assert writes is not None
        (row,) = writes.inbox.values()
        assert row.status == (REFUSED if i == MAX_PENDING_SIGNALS else SENT)
    position = h.wait("a")
    assert h.got[position] == 1  # the oldest one, taken at once
    assert len(h.eng._m.inbox.waiting["r"]) == MAX_PENDING_SIGNALS - 1
    h.batch(lambda: h.eng.report("t", TaskReport(kind="completed", task_id=h.task_id, attempt=0,
                                                 worker_id="w1", ts_ms=NOW, output=b"{}")))
    assert "r" not in h.eng.runs
    h.eng.begin(NOW)
    h.eng.signal("t", SignalRun(run_id="r", signal_id="late", name="a", payload=b"1"))
    fx = h.eng.finish()
    assert fx.durable is None or not fx.durable.inbox  # nothing recorded for a finished run
