"""Micro-benchmark: time per assignment with 1k vs 100k queued tasks over 1k fairness keys.

`python -m bench.assign_bench` — pure in-process (no services). Choosing the next task is a
heap pop plus a ring rotation, so the per-assignment cost should barely grow with the queue.
"""

from __future__ import annotations

import gc
import time

from libs.common.messages import WorkerInfo
from libs.common.specs import TaskSpec
from services.scheduler.assign import Assigner
from services.scheduler.model import Task, TaskStatus

ASSIGNMENTS = 1_000


def per_assignment_us(n_tasks: int, n_keys: int) -> float:
    asg = Assigner()
    tasks: dict[str, Task] = {}
    spec = TaskSpec(name="a")
    for i in range(n_tasks):
        task = Task(tenant="t", id=f"x{i}", run_id="r", name="a", action="w:a", spec=spec,
                    status=TaskStatus.QUEUED, priority=1 + i % 3, created_ms=0)
        task.group = f"k{i % n_keys}"
        task.stage = "ready"
        tasks[task.id] = task
        asg.enqueue(task)
    asg.upsert_worker(WorkerInfo(worker_id="w", tenant="t", name="w", dispatcher_id="d",
                                 actions=["w:a"], slots=ASSIGNMENTS))
    gc.collect()  # measure the choice, not a collection of the setup's garbage
    gc.disable()
    try:
        t0 = time.perf_counter()
        out = asg.assign(tasks, limit=ASSIGNMENTS)
        elapsed = time.perf_counter() - t0
    finally:
        gc.enable()
    assert len(out) == min(ASSIGNMENTS, n_tasks)
    return elapsed / len(out) * 1e6


def main() -> dict[str, float]:
    small = min(per_assignment_us(1_000, 1_000) for _ in range(3))
    large = min(per_assignment_us(100_000, 1_000) for _ in range(3))
    result = {"us_per_assignment_1k": small, "us_per_assignment_100k": large, "ratio": large / small}
    print(f"1k queued:   {small:.2f} µs/assignment")
    print(f"100k queued: {large:.2f} µs/assignment  (ratio {large / small:.2f}, goal <= 2)")
    return result


if __name__ == "__main__":
    main()
