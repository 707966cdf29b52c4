"""Triggering runs: validate the request and the input, adopt a child's parent, admit it under
the tenant's limits, offload a large input, audit, and publish `run.trigger` to the scheduler.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import msgspec
from opentelemetry.trace import SpanKind

from libs.common import jetstream, metrics, subjects, telemetry
from libs.common.flow import Joined
from libs.common.jetstream import Outgoing
from libs.common.messages import TRIGGER_BATCH_BYTES, TriggerRun, TriggerRuns, encode
from libs.common.payloads import PayloadTooLarge
from libs.common.subjects import Header
from libs.common.tokens import Principal
from services.api.actions import children, flow
from services.api.actions.admission import admit_triggers
from services.api.actions.audit import audit_entry
from services.api.actions.offload import offload
from services.api.repos.errors import Invalid
from services.api.repos.workflows import Version
from services.api.schemas import BulkRunCreated, RunCreated, RunRequest
from services.api.state import ApiState

_JSON = msgspec.json.Encoder()
SCOPE = "ratchet.api"
MAX_BULK = 1000


async def trigger_run(
    api: ApiState, caller: Principal, name: str, req: RunRequest, traceparent: str | None = None
) -> RunCreated:
    """Start a run on the current version of `name`, or on `req.version_id` if given.

    A child run (`req.parent`) that exists already (a retried parent) is not started again.
    With an idempotency key (or the workflow's CEL key) a live key answers its run,
    deduplicated; a debounced or batched workflow answers the run of the trigger's window
    (docs/flow-control.md).

    Raises:
        NotFound: no such workflow, version or parent task.
        Conflict: the workflow is paused in drop mode (409).
        Invalid: a bad priority, a parent past its limits, or a flow key that cannot be
            evaluated for this input.
        InputInvalid: the input does not fit the version's input_schema (422).
        PayloadTooLarge: the input is above RATCHET_MAX_PAYLOAD_BYTES (413).
        LimitExceeded: over the tenant's trigger rate or unfinished runs (429).
    """
    tenant = caller.tenant
    version = await _version(api, tenant, name, req.version_id)
    trig = _trigger(api, name, version, req)
    if req.callback_url is not None:  # before the trigger: the run may end at once
        await api.deliveries.add_callback(tenant, trig.run_id, req.callback_url)
    if req.parent is not None:  # a child run: it may exist already (a retried parent)
        await children.adopt_parents(api.runs, api.settings, tenant, [(trig, req.parent)])
    await flow.refuse_if_dropping(api, tenant, name)
    wanted = flow.Wanted(trig, flow.claim_for(
        version.spec, trig, req.idempotency_key, req.idempotency_ttl))
    if wanted.claim is not None or flow.windowed(version.spec):
        return (await _trigger_with_flow(api, caller, name, version, [wanted], traceparent))[0]
    if await children.not_started(api.runs, tenant, [trig]):
        await admit_triggers(api, tenant, 1)
        await _offload_input(api, tenant, trig)
        await api.audit.record(audit_entry(caller, "run.trigger", trig.run_id, {"workflow": name}))
        with _trigger_span(tenant, name, traceparent, [trig]):
            await jetstream.publish_one(api.js, _outgoing(tenant, trig))
        metrics.API_RUNS_TRIGGERED.inc()
    return RunCreated(run_id=trig.run_id, workflow=name, version_id=version.id)


async def trigger_runs(
    api: ApiState, caller: Principal, name: str, reqs: list[RunRequest],
    traceparent: str | None = None,
) -> BulkRunCreated:
    """Start up to MAX_BULK runs of `name` at once, all admitted or none, published pipelined.

    Raises what `trigger_run` raises, for any of the runs (then none starts).
    """
    if not 1 <= len(reqs) <= MAX_BULK:
        raise Invalid(f"runs must hold 1 to {MAX_BULK} items")
    tenant = caller.tenant
    versions: dict[str | None, Version] = {}
    for req in reqs:
        if req.version_id not in versions:
            versions[req.version_id] = await _version(api, tenant, name, req.version_id)
    trigs = [_trigger(api, name, versions[r.version_id], r) for r in reqs]
    for trig, req in zip(trigs, reqs, strict=True):
        if req.callback_url is not None:
            await api.deliveries.add_callback(tenant, trig.run_id, req.callback_url)
    spawned = [(t, r.parent) for t, r in zip(trigs, reqs, strict=True) if r.parent]
    if spawned:
        await children.adopt_parents(api.runs, api.settings, tenant, spawned)
    await flow.refuse_if_dropping(api, tenant, name)
    wanted = [
        flow.Wanted(t, flow.claim_for(versions[r.version_id].spec, t, r.idempotency_key,
                                      r.idempotency_ttl))
        for t, r in zip(trigs, reqs, strict=True)
    ]
    if any(w.claim is not None for w in wanted) or any(
        flow.windowed(v.spec) for v in versions.values()
    ):
        by_version = {v.id: v for v in versions.values()}
        results: list[RunCreated] = []
        slots: list[int] = []
        for vid in dict.fromkeys(t.version_id for t in trigs):  # one transaction per version
            idx = [i for i, w in enumerate(wanted) if w.trig.version_id == vid]
            slots.extend(idx)
            results.extend(await _trigger_with_flow(
                api, caller, name, by_version[vid], [wanted[i] for i in idx], traceparent))
        ordered = [c for _, c in sorted(zip(slots, results, strict=True), key=lambda p: p[0])]
        return BulkRunCreated(run_ids=[c.run_id for c in ordered],
                              deduplicated=[c.deduplicated for c in ordered])
    fresh = await children.not_started(api.runs, tenant, trigs)
    if fresh:
        await admit_triggers(api, tenant, len(fresh))
        for trig in fresh:
            await _offload_input(api, tenant, trig)
        await api.audit.record(audit_entry(
            caller, "run.trigger_bulk", name,
            {"workflow": name, "runs": len(fresh), "run_ids": [t.run_id for t in fresh]},
        ))
        with _trigger_span(tenant, name, traceparent, fresh):
            await jetstream.publish_batch(api.js, _bulk_outgoing(tenant, fresh))
        metrics.API_RUNS_TRIGGERED.inc(len(fresh))
    return BulkRunCreated(run_ids=[t.run_id for t in trigs], deduplicated=[False] * len(trigs))


async def _trigger_with_flow(
    api: ApiState, caller: Principal, name: str, version: Version, wanted: list[flow.Wanted],
    traceparent: str | None,
) -> list[RunCreated]:
    """Triggers of one version that claim idempotency keys or join windows, in one
    transaction: a key is claimed, the rest admitted, then published (or joined) before the
    commit, so a failure anywhere gives the keys back. Windows opened or filled are announced
    to the scheduler after the commit (it reads them back)."""
    tenant = caller.tenant
    spec = version.spec
    out: list[RunCreated] = [
        RunCreated(run_id=w.trig.run_id, workflow=name, version_id=version.id) for w in wanted
    ]
    joins: list[Joined] = []
    async with api.pool.acquire() as conn, conn.transaction():
        earlier = await flow.claim(conn, tenant, name, wanted)
        for i, run_id in earlier.items():
            out[i] = RunCreated(run_id=run_id, workflow=name, version_id=version.id,
                                deduplicated=True)
        todo = [w.trig for i, w in enumerate(wanted) if i not in earlier]
        fresh = {t.run_id for t in await children.not_started(api.runs, tenant, todo)}
        if not fresh:
            return out
        await admit_triggers(api, tenant, len(fresh))
        if flow.windowed(spec):
            for i, w in enumerate(wanted):
                if i not in earlier and w.trig.run_id in fresh:
                    joined = await flow.join(conn, tenant, spec, w)
                    joins.append(joined)
                    out[i] = RunCreated(run_id=joined.run_id, workflow=name,
                                        version_id=version.id)
            await api.audit.record(audit_entry(
                caller, "run.trigger", name,
                {"workflow": name, "held": len(joins), "runs": sorted({j.run_id for j in joins})},
            ))
        else:
            trigs = [t for t in todo if t.run_id in fresh]
            for trig in trigs:
                await _offload_input(api, tenant, trig)
            await api.audit.record(audit_entry(
                caller, "run.trigger", trigs[0].run_id if len(trigs) == 1 else name,
                {"workflow": name, "run_ids": [t.run_id for t in trigs]},
            ))
            with _trigger_span(tenant, name, traceparent, trigs):
                if len(trigs) == 1:
                    await jetstream.publish_one(api.js, _outgoing(tenant, trigs[0]))
                else:
                    await jetstream.publish_batch(api.js, _bulk_outgoing(tenant, trigs))
        metrics.API_RUNS_TRIGGERED.inc(len(fresh))
    if joins:
        await jetstream.publish_batch(api.js, flow.due_messages(tenant, joins))
    return out


async def _version(api: ApiState, tenant: str, name: str, version_id: str | None) -> Version:
    if version_id is None:
        return await api.workflows.current(tenant, name)
    return await api.workflows.version(tenant, name, version_id)


def _trigger(api: ApiState, name: str, version: Version, req: RunRequest) -> TriggerRun:
    if req.priority is not None and not 1 <= req.priority <= 3:
        raise Invalid("priority must be 1, 2 or 3")
    raw = _JSON.encode(req.input if req.input is not None else {})
    if len(raw) > api.settings.max_payload_bytes:  # the size first: a clearer answer than 422
        raise PayloadTooLarge(len(raw), api.settings.max_payload_bytes)
    api.inputs.check(version.id, version.spec, req.input)
    return TriggerRun(
        run_id=uuid.uuid4().hex,
        workflow=name,
        version_id=version.id,
        input=raw,
        metadata=req.metadata,
        priority=req.priority,
    )


async def _offload_input(api: ApiState, tenant: str, trig: TriggerRun) -> None:
    """A large input goes to the payload store under the run's id (so the payloads GC frees
    it with the run) and travels as a reference: 413 past RATCHET_MAX_PAYLOAD_BYTES.

    The API offloads rather than the SDK uploading first: it has parsed and schema-checked the
    input anyway, and every client (curl, the TypeScript SDK, old SDKs) gets the same path."""
    trig.input = await offload(api.store, api.settings, tenant, trig.run_id, trig.input)


@contextlib.contextmanager
def _trigger_span(
    tenant: str, workflow: str, parent: str | None, trigs: list[TriggerRun]
) -> Iterator[None]:
    """Trace the trigger (a child of the caller's `traceparent` header, if any) and hand its
    context to the runs. A bulk request is one span: its runs share its trace."""
    attrs: dict[str, str | int] = {"ratchet.tenant": tenant, "ratchet.workflow": workflow}
    if len(trigs) == 1:
        attrs["ratchet.run_id"] = trigs[0].run_id
    else:
        attrs["ratchet.runs"] = len(trigs)
    with telemetry.open_span(SCOPE, "run.trigger", parent, attrs, kind=SpanKind.PRODUCER) as tp:
        for trig in trigs:
            trig.traceparent = tp
        yield


def _bulk_outgoing(tenant: str, trigs: list[TriggerRun]) -> list[Outgoing]:
    """The runs of one bulk request as TriggerRuns messages of at most TRIGGER_BATCH_BYTES.

    Each message's msg-id names its first run and its size, so a retried request's publish is
    dropped as a duplicate like a single trigger's. Runs of one request share one trace span.
    """
    chunks: list[list[TriggerRun]] = [[]]
    size = 0
    for trig in trigs:
        weight = 256 + len(trig.input) + sum(len(v) for v in trig.additional.values())
        if chunks[-1] and size + weight > TRIGGER_BATCH_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(trig)
        size += weight
    tp = trigs[0].traceparent if trigs else None
    headers = {Header.TRACEPARENT.value: tp} if tp else {}
    return [
        Outgoing(
            subjects.cmd(tenant, "run.trigger"), encode(TriggerRuns(runs=chunk)),
            f"runs:{chunk[0].run_id}:{len(chunk)}", headers,
        )
        for chunk in chunks
    ]


def _outgoing(tenant: str, trig: TriggerRun) -> Outgoing:
    headers = {Header.TRACEPARENT.value: trig.traceparent} if trig.traceparent else {}
    return Outgoing(
        subjects.cmd(tenant, "run.trigger"), encode(trig), f"run:{trig.run_id}:trigger", headers
    )
