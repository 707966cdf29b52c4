"""Child runs on the trigger path: check the parent and the limits, name the child.

A trigger that carries `parent` (the SDK sets it inside a task) starts a child run of that
task's run. The API checks that the parent task belongs to one of the caller's runs, applies
the depth and fan-out limits (settings `max_child_depth`, `max_children_per_task`), and
derives the child's run id from the parent task and the spawn index or key: a retried parent
task spawning again names the very runs its earlier attempt started, and those that already
exist are not triggered again (the scheduler checks existence too, for triggers in flight).
"""

from __future__ import annotations

import uuid

from libs.common.messages import TriggerRun
from libs.common.settings import Settings
from libs.common.statuses import RunStatus
from services.api.repos.errors import Invalid, NotFound
from services.api.repos.runs import RunRepo
from services.api.schemas import ParentRef

_CHILD_NS = uuid.UUID("0d9a3c4e-5b7f-4c21-8e6a-7f3b2a1c9d05")
SOURCE = "child"  # the runs' `source`: never taken for a fresh API trigger by the scheduler


def child_run_id(parent: ParentRef) -> str:
    """The same run id for the same spawn of the same task, whatever the attempt."""
    if parent.key is not None:
        return uuid.uuid5(_CHILD_NS, f"{parent.task_id}/key/{parent.key}").hex
    return uuid.uuid5(_CHILD_NS, f"{parent.task_id}/index/{parent.index}").hex


async def adopt_parents(
    runs: RunRepo, settings: Settings, tenant: str, trigs: list[tuple[TriggerRun, ParentRef]]
) -> None:
    """Turn triggers into child triggers of their parents, or refuse them naming the problem
    (`Invalid`: 400; `NotFound`: 404).

    The parent lookup is one query per distinct parent task (a bulk spawn has one).
    """
    seen: dict[tuple[str, str], tuple[int, str, str]] = {}
    for trig, parent in trigs:
        if parent.index < 0:
            raise Invalid("parent.index must be >= 0")
        if parent.key is not None and not 1 <= len(parent.key) <= 255:
            raise Invalid("parent.key must be 1 to 255 characters")
        ident = (parent.run_id, parent.task_id)
        found = seen.get(ident)
        if found is None:
            found = await runs.parent_task(tenant, parent.run_id, parent.task_id)
            if found is None:
                raise NotFound(
                    f"parent task {parent.task_id!r} of run {parent.run_id!r} not found"
                )
            seen[ident] = found
        depth, task_name, status = found
        if depth + 1 > settings.max_child_depth:
            raise Invalid(
                f"child depth limit reached: run {parent.run_id} is at depth {depth} and "
                f"max_child_depth is {settings.max_child_depth}",
                extra={"limit": "max_child_depth", "value": settings.max_child_depth},
            )
        if parent.index >= settings.max_children_per_task:
            raise Invalid(
                f"fan-out limit reached: task {task_name!r} of run {parent.run_id} may start "
                f"at most max_children_per_task={settings.max_children_per_task} children",
                extra={"limit": "max_children_per_task",
                       "value": settings.max_children_per_task},
            )
        if status == RunStatus.CANCELLED.value:
            raise Invalid(f"parent run {parent.run_id} was cancelled")
        trig.run_id = child_run_id(parent)
        trig.source = SOURCE
        trig.parent_run_id = parent.run_id
        trig.parent_task_id = parent.task_id
        trig.parent_task = task_name
        trig.depth = depth + 1


async def not_started(runs: RunRepo, tenant: str, trigs: list[TriggerRun]) -> list[TriggerRun]:
    """The child triggers whose run does not exist yet (each once), and every other trigger."""
    child_ids = [t.run_id for t in trigs if t.parent_run_id is not None]
    if not child_ids:
        return trigs
    existing = await runs.existing(tenant, child_ids)
    out: list[TriggerRun] = []
    named: set[str] = set()
    for trig in trigs:
        if trig.run_id in existing or trig.run_id in named:
            continue
        named.add(trig.run_id)
        out.append(trig)
    return out
