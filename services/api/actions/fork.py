"""Forking a run (docs/interaction.md): a new run that runs `from_task` and everything after it
again and takes every other task's recorded output from the run it was forked from.

The new run is built on the workflow's current version (or a pinned one) and the tasks are
matched by name: a task of the new version that does not depend on `from_task` (directly or
through its parents) and succeeded in the old run is reused; every other task runs. For a
durable `from_task`, `from_step=N` keeps the entries of its durable log before position N, so
a replay returns them and the code runs for real from step N on. The trigger carries what is
reused (`messages.ForkSeed`); the scheduler starts the run with those tasks SUCCEEDED.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from libs.common import jetstream, subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import DurableStep, ForkSeed, TriggerRun, encode
from libs.common.specs import WorkflowSpec
from libs.common.tokens import Principal
from services.api.actions.admission import admit_triggers
from services.api.actions.audit import audit_entry
from services.api.actions.offload import offload
from services.api.repos.errors import Invalid, NotFound, TooLarge
from services.api.schemas.interaction import ForkAccepted, ForkRequest
from services.api.state import ApiState

# A fork's trigger carries the reused outputs (offloaded ones as references): it must fit a
# NATS message with room to spare.
MAX_FORK_BYTES = 768 * 1024


def downstream(spec: WorkflowSpec, name: str) -> set[str]:
    """`name` and every task that depends on it, directly or not."""
    children: dict[str, list[str]] = {}
    for t in spec.tasks:
        for parent in set(t.parents):
            children.setdefault(parent, []).append(t.name)
    seen = {name}
    stack = [name]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


async def fork_run(
    api: ApiState, caller: Principal, run_id: str, req: ForkRequest
) -> ForkAccepted:
    """Start the fork; returns the new run's id and what it reuses.

    Raises:
        NotFound: no such run, version, or task `from_task` in the version.
        Invalid: `from_step` on a task that is not durable.
        TooLarge: the reused outputs do not fit one trigger.
        LimitExceeded: over the tenant's trigger rate or unfinished runs (429).
    """
    tenant = caller.tenant
    records = await api.runs.get(tenant, run_id)
    if records is None:
        raise NotFound(f"run {run_id!r} not found")
    run, tasks, _ = records
    workflow = run["workflow"]
    version = (await api.workflows.current(tenant, workflow) if req.version_id is None
               else await api.workflows.version(tenant, workflow, req.version_id))
    by_name = {t.name: t for t in version.spec.tasks}
    if req.from_task not in by_name:
        raise NotFound(f"workflow {workflow!r} version {version.id} has no task "
                       f"{req.from_task!r}; its tasks: {sorted(by_name)}")
    if req.from_step is not None and not by_name[req.from_task].durable:
        raise Invalid(f"from_step is for durable tasks; {req.from_task!r} is not one")
    rerun = downstream(version.spec, req.from_task)
    old = {t["name"]: t for t in tasks}
    outputs = {
        name: bytes(old[name]["output"]) if old[name]["output"] is not None else b"null"
        for name in by_name
        if name not in rerun and name in old and old[name]["status"] == "SUCCEEDED"
    }
    logs: dict[str, list[DurableStep]] = {}
    if req.from_step is not None and req.from_task in old:
        logs[req.from_task] = await api.interaction.durable_steps(
            tenant, old[req.from_task]["id"], req.from_step)
    new_id = uuid.uuid4().hex
    if req.input is not None:
        raw_input = msgspec.json.encode(req.input)
        api.inputs.check(version.id, version.spec, req.input)
        raw_input = await offload(api.store, api.settings, tenant, new_id, raw_input)
    else:
        raw_input = bytes(run["input"])
    trig = TriggerRun(
        run_id=new_id, workflow=workflow, version_id=version.id, input=raw_input,
        metadata=_metadata(run["metadata"]), priority=run["priority"], source="fork",
        fork=ForkSeed(from_run_id=run_id, outputs=outputs, logs=logs),
    )
    body = encode(trig)
    if len(body) > MAX_FORK_BYTES:
        raise TooLarge(f"the outputs this fork would reuse take {len(body)} bytes; a fork"
                       f" carries at most {MAX_FORK_BYTES} (fork from an earlier task)")
    await admit_triggers(api, tenant, 1)
    await api.interaction.record_fork(tenant, new_id, run_id, req.from_task, req.from_step)
    await api.audit.record(audit_entry(caller, "run.fork", new_id, {
        "forked_from": run_id, "from_task": req.from_task, "from_step": req.from_step}))
    await jetstream.publish_one(
        api.js, Outgoing(subjects.cmd(tenant, "run.trigger"), body, f"run:{new_id}:trigger"))
    return ForkAccepted(run_id=new_id, forked_from=run_id, version_id=version.id,
                        reused=sorted(outputs))


def _metadata(raw: Any) -> dict[str, str]:
    doc = msgspec.json.decode(raw) if isinstance(raw, str | bytes) else raw
    return {str(k): str(v) for k, v in (doc or {}).items()}
