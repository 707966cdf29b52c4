"""A forked run's start (docs/interaction.md): the tasks it reuses from the run it was forked
from are SUCCEEDED from the beginning, with the recorded outputs, so their children count them
done; a durable task forked `from_step` starts on the kept part of its log (`_durable.py`).
The API decides what is reused (services/api/actions/fork.py); this only applies it."""

from __future__ import annotations

from collections.abc import Callable

from libs.common.messages import ForkSeed
from services.scheduler.engine._batch import Batch
from services.scheduler.engine._durable import Durable
from services.scheduler.model import Run, Task, TaskStatus


def seed_fork(run: Run, seed: ForkSeed, batch: Batch, durable: Durable,
              emit_state: Callable[[Task], None]) -> list[str]:
    """Apply the seed to a run just built (before admission); returns the reused tasks."""
    reused = []
    for name, output in seed.outputs.items():
        task = run.tasks.get(name)
        if task is None or task.role != "task" or task.status != TaskStatus.PENDING:
            continue
        task.status = TaskStatus.SUCCEEDED
        task.output = output
        task.finished_ms = batch.now_ms
        batch.fx.touch_task(task)
        emit_state(task)
        for child in task.children:
            run.tasks[child].pending_parents -= 1
        reused.append(name)
    for name, steps in seed.logs.items():
        task = run.tasks.get(name)
        if task is not None and task.spec.durable:
            durable.seed(task, steps)
    return sorted(reused)
