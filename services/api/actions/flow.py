"""Flow control on the API's side (docs/flow-control.md): idempotency claims and window joins
for triggers, pausing and resuming workflows, and what the run page shows of held triggers.

A trigger of a debounced or batched workflow does not publish a run: it joins its key's
window in PostgreSQL and answers with the window's run id (fixed when the window opened);
the scheduler owning the tenant starts that run when the window ends. A trigger with an
idempotency key claims it in the same transaction as everything else it writes, so a
failure before its publish gives the key back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from libs.common import flow, jetstream, subjects
from libs.common.flow import Claim, FlowKeyError, Joined
from libs.common.flow_messages import (
    DUE_VERB,
    PAUSE_VERB,
    RESUME_VERB,
    FlowDue,
    PauseWorkflow,
    ResumeWorkflow,
)
from libs.common.jetstream import Outgoing
from libs.common.messages import TriggerRun, encode
from libs.common.specs import WorkflowSpec
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.repos.errors import Conflict, Invalid, NotFound
from services.api.repos.flow import Pause
from services.api.schemas.flow import HeldTriggerView, PauseView, RunFlowView
from services.api.state import ApiState

TRIGGERS_SHOWN = 1000  # held triggers listed for one run


@dataclass(slots=True)
class Wanted:
    """What one trigger asks of flow control: its idempotency claim, if any."""

    trig: TriggerRun
    claim: Claim | None


def claim_for(spec: WorkflowSpec, trig: TriggerRun, key: str | None,
              ttl: float | str | None) -> Claim | None:
    """The trigger's idempotency claim: its own key, else the workflow's CEL key, else none."""
    if key is None and spec.idempotency is not None:
        try:
            key = flow.eval_flow_key(
                spec.idempotency.key, flow.key_activation(trig.input, trig.metadata),
                flow.MAX_IDEMPOTENCY_KEY_CHARS,
            )
        except FlowKeyError as exc:
            raise Invalid(f"idempotency key of workflow {spec.name!r}: {exc}") from exc
    if key is None:
        return None
    if not key or len(key) > flow.MAX_IDEMPOTENCY_KEY_CHARS:
        raise Invalid(f"idempotency_key must be 1-{flow.MAX_IDEMPOTENCY_KEY_CHARS} characters")
    if isinstance(ttl, str) and ttl != flow.UNTIL_FINISHED:
        raise Invalid(f"idempotency_ttl must be seconds or {flow.UNTIL_FINISHED!r}")
    if isinstance(ttl, (int, float)) and not 0 < ttl <= 366 * 24 * 3600:
        raise Invalid("idempotency_ttl must be more than 0 and at most a year (in seconds)")
    return Claim(key=key, run_id=trig.run_id, ttl_s=flow.ttl_of(spec, ttl))


def windowed(spec: WorkflowSpec) -> bool:
    return flow.window_kind(spec) is not None


async def claim(conn: asyncpg.Connection, tenant: str, workflow: str,
                wanted: list[Wanted]) -> dict[int, str]:
    """Claim the keys of `wanted`; returns index -> the earlier run of each trigger whose key
    was live (it starts nothing). Two triggers of one request with one key: the later is a
    duplicate of the earlier."""
    first: dict[str, int] = {}
    claims: list[Claim] = []
    dup_of: dict[int, int] = {}
    for i, w in enumerate(wanted):
        if w.claim is None:
            continue
        if w.claim.key in first:
            dup_of[i] = first[w.claim.key]
        else:
            first[w.claim.key] = i
            claims.append(w.claim)
    holders = await flow.claim_keys(conn, tenant, workflow, claims)
    out: dict[int, str] = {}
    for key, i in first.items():
        if holders[key] != wanted[i].trig.run_id:
            out[i] = holders[key]
    for i, j in dup_of.items():
        out[i] = out.get(j, wanted[j].trig.run_id)
    return out


async def join(conn: asyncpg.Connection, tenant: str, spec: WorkflowSpec,
               w: Wanted) -> Joined:
    """Add the trigger to its key's window (inside the caller's transaction); the claim, if
    any, is moved to the window's run."""
    trig = w.trig
    try:
        key = flow.group_key(spec, flow.key_activation(trig.input, trig.metadata))
    except FlowKeyError as exc:
        rule = "debounce" if spec.debounce is not None else "batch"
        raise Invalid(f"{rule} key of workflow {spec.name!r}: {exc}") from exc
    joined = await flow.join_window(conn, tenant, spec, key, trigger_id=trig.run_id,
                                    source=trig.source, trigger=encode(trig))
    if w.claim is not None and joined.run_id != trig.run_id:
        await flow.move_key(conn, tenant, spec.name, w.claim.key, joined.run_id)
    return joined


def due_messages(tenant: str, joins: list[Joined]) -> list[Outgoing]:
    """Tell the scheduler of windows these joins opened or filled (after the commit: it reads
    the window back)."""
    return [
        Outgoing(subjects.cmd(tenant, DUE_VERB), encode(FlowDue(run_id=j.run_id, due_ms=j.deadline_ms)),
                 f"flowdue:{j.run_id}:{'sealed' if j.sealed else 'opened'}")
        for j in joins if j.opened or j.sealed
    ]


# pause / resume -----------------------------------------------------------------------------
def pause_view(p: Pause, held: int = 0) -> PauseView:
    return PauseView(workflow=p.workflow, paused=True, mode=p.mode,
                     paused_at=p.paused_at.isoformat(), paused_by=p.paused_by,
                     dropped=p.dropped, held=held)


async def refuse_if_dropping(api: ApiState, tenant: str, workflow: str) -> None:
    """409 naming the pause when the workflow is paused in drop mode."""
    p = await api.flow.pause_of(tenant, workflow)
    if p is not None and p.mode == "drop":
        raise Conflict(
            f"workflow {workflow!r} is paused (mode drop, since {p.paused_at.isoformat()}"
            f" by {p.paused_by or 'unknown'}): triggers are refused until it is resumed",
            extra={"pause": {"workflow": workflow, "mode": p.mode,
                             "paused_at": p.paused_at.isoformat()}},
        )


async def pause(api: ApiState, caller: Principal, workflow: str, mode: str) -> PauseView:
    if mode not in ("queue", "drop"):
        raise Invalid("mode must be 'queue' or 'drop'")
    await api.workflows.current(caller.tenant, workflow)  # NotFound for no such workflow
    pause_id = uuid.uuid4().hex
    entry = audit_entry(caller, "workflow.pause", workflow, {"mode": mode})
    p = await api.flow.pause(caller.tenant, workflow, mode, caller.token_name or "", entry)
    await jetstream.publish_one(api.js, Outgoing(
        subjects.cmd(caller.tenant, PAUSE_VERB),
        encode(PauseWorkflow(workflow=workflow, mode=mode, pause_id=pause_id)),
        f"flowpause:{pause_id}",
    ))
    return pause_view(p)


async def resume(api: ApiState, caller: Principal, workflow: str) -> PauseView:
    await api.workflows.current(caller.tenant, workflow)
    held = await api.flow.held_runs(caller.tenant, workflow)
    entry = audit_entry(caller, "workflow.resume", workflow, {"held_runs": held})
    ended = await api.flow.resume(caller.tenant, workflow, entry)
    resume_id = uuid.uuid4().hex
    # Published even when it was not paused: a resume also releases anything a lost message
    # left held, and repeating it is harmless.
    await jetstream.publish_one(api.js, Outgoing(
        subjects.cmd(caller.tenant, RESUME_VERB),
        encode(ResumeWorkflow(workflow=workflow, pause_id=resume_id)),
        f"flowresume:{resume_id}",
    ))
    return PauseView(workflow=workflow, paused=False, mode=None, paused_at=None, paused_by=None,
                     dropped=ended.dropped if ended is not None else 0, held=held)


async def pause_state(api: ApiState, tenant: str, workflow: str) -> PauseView:
    await api.workflows.current(tenant, workflow)
    p = await api.flow.pause_of(tenant, workflow, fresh=True)
    held = await api.flow.held_runs(tenant, workflow)
    if p is None:
        return PauseView(workflow=workflow, paused=False, mode=None, paused_at=None,
                         paused_by=None, dropped=0, held=held)
    return pause_view(p, held)


async def run_flow(api: ApiState, tenant: str, run_id: str) -> RunFlowView:
    """The window, batch or pause that holds (or held) this run, and its triggers."""
    w = await api.flow.window(tenant, run_id)
    if w is None:
        raise NotFound(f"run {run_id!r} was not held by debounce, batching or a pause")
    items = await api.flow.triggers(tenant, run_id, TRIGGERS_SHOWN)
    return RunFlowView(
        run_id=run_id, workflow=w.workflow, kind=w.kind, key=w.group_key, state=w.state,
        count=w.items, opened_at=w.opened_at.isoformat(), deadline=w.deadline.isoformat(),
        triggers=[HeldTriggerView(trigger_id=t.trigger_id, seq=t.seq, source=t.source,
                                  at=t.created_at.isoformat()) for t in items],
    )
