"""DAG conditions: `wait_for`, `skip_if` and `cancel_if` on a task of a workflow.

They are looked at once, when the task becomes ready (its parents have all succeeded or
been skipped), before it is queued:

1. `cancel_if` — any ParentOutput condition that holds ends the task CANCELLED (its
   dependants are cancelled, as after any failure);
2. `skip_if` — any that holds ends it SKIPPED: its dependants go on as if it had succeeded,
   and read its output as null;
3. `wait_for` — every Sleep / Event condition must hold before the task is queued. Each is
   recorded like a durable wait at a negative position of the task's log (`_durable.py`): a
   sleep counts from the moment the task became ready, and only events published after that
   moment count. The log survives restarts, so a pending condition keeps its deadline.

A ParentOutput expression is CEL over: `input`, the output of the parent it names (or of the
only parent; with several and none named, a map of parent name to output); `payload`, that
map always; `metadata`, the run's metadata. One that fails to evaluate does not hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec

from libs.common.cel import CelError, compile_expression, to_cel
from libs.common.messages import TaskError
from libs.common.specs import ConditionSpec, EventCondition, ParentOutputCondition, SleepCondition
from services.scheduler.engine._durable import Durable
from services.scheduler.model import Run, Task, TaskStatus
from services.scheduler.records import DONE

_JSON = msgspec.json.Decoder()


def cond_position(index: int) -> int:
    """Where `wait_for[index]` lives in the task's log (negative: never a code position)."""
    return -1 - index


class Conditions:
    """The DAG conditions of the engine's tasks, looked at as each becomes ready."""

    def __init__(
        self,
        runs: dict[str, Run],
        durable: Durable,
        *,
        end_task: Callable[[Task, TaskStatus, TaskError], None],
        skip: Callable[[Task], None],
        queue: Callable[[Task], None],
    ) -> None:
        self._runs = runs
        self._durable = durable  # wait_for conditions live in the task's durable log
        # The transitions a condition causes (the state machine's).
        self._end_task = end_task  # cancel_if held: end it, cancel its dependants
        self._skip = skip  # skip_if held: end it SKIPPED, its dependants go on
        self._queue = queue  # every wait_for condition held
        self._cleared: set[str] = set()  # tasks whose conditions are settled: queue as usual

    def intercept(self, task: Task) -> bool:
        """Called as a PENDING task is about to be queued; True when this module took it."""
        spec = task.spec
        if task.id in self._cleared or not (spec.wait_for or spec.skip_if or spec.cancel_if):
            return False
        run = self._runs[task.run_id]
        if any(self._holds(run, task, c) for c in spec.cancel_if):
            err = TaskError(type="ConditionCancelled", message="a cancel_if condition held",
                            non_retryable=True)
            self._end_task(task, TaskStatus.CANCELLED, err)
            return True
        if any(self._holds(run, task, c) for c in spec.skip_if):
            self._skip(task)  # dependants go on as after a success
            return True
        if not spec.wait_for:
            self._cleared.add(task.id)
            return False
        for i, c in enumerate(spec.wait_for):
            if self._durable.entry(task.id, cond_position(i)) is None:
                cond = _as_wait(c)
                spec_json = json.dumps({"conds": [cond]}, sort_keys=True).encode()
                self._durable.record(task, cond_position(i), "cond", spec_json, [cond])
        return True

    def entry_done(self, task: Task) -> None:
        """One wait_for condition held: queue the task once all of them have."""
        if task.status != TaskStatus.PENDING or task.id in self._cleared:
            return
        for i in range(len(task.spec.wait_for)):
            e = self._durable.entry(task.id, cond_position(i))
            if e is None or e.status != DONE:
                return
        self._cleared.add(task.id)
        self._queue(task)

    def forget(self, tasks: list[Task]) -> None:
        for task in tasks:
            self._cleared.discard(task.id)

    def _holds(self, run: Run, task: Task, cond: ParentOutputCondition) -> bool:
        try:
            program = compile_expression(cond.expression)
        except CelError:
            return False  # the API refuses these; an old definition simply does not hold
        outputs = {p: _output(run.tasks[p]) for p in task.spec.parents}
        if cond.parent:
            subject = outputs.get(cond.parent)
        elif len(outputs) == 1:
            subject = next(iter(outputs.values()))
        else:
            subject = outputs
        matched, _error = program.evaluate({
            "input": to_cel(subject), "payload": to_cel(outputs),
            "metadata": to_cel(run.metadata),
        })
        return bool(matched)


def _output(task: Task) -> Any:
    if task.status != TaskStatus.SUCCEEDED or not task.output:
        return None
    try:
        return _JSON.decode(task.output)
    except msgspec.DecodeError:
        return None


def _as_wait(c: ConditionSpec) -> dict[str, Any]:
    if isinstance(c, SleepCondition):
        return {"sleep_ms": int(c.sleep_s * 1000)}
    assert isinstance(c, EventCondition)  # skip_if / cancel_if take ParentOutput only
    return {"event": c.key, "expression": c.expression, "scope": c.scope}
