"""Workflow registration, versions (listing, rollback) and run triggers."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import ClientException
from litestar.params import HeaderParameter, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from opentelemetry.trace import SpanKind

from libs.common import jetstream, metrics, specs, subjects, telemetry
from libs.common.jetstream import Outgoing
from libs.common.messages import TRIGGER_BATCH_BYTES, TriggerRun, TriggerRuns, encode
from libs.common.payloads import PayloadTooLarge
from libs.common.subjects import Header
from libs.common.tokens import Scope
from services.api import children
from services.api.auth import Api, Caller, Tenant, requires
from services.api.input_schema import schema_problem
from services.api.repos.workflows import Version, VersionInfo
from services.api.routes.crons import workflow_crons
from services.api.routes.filters import notify_matcher
from services.api.routes.limits import admit_triggers
from services.api.routes.payloads import offload
from services.api.routes.rate_limits import check_fairness
from services.api.routes.tokens import audit_entry
from services.api.schemas import (
    BulkRunCreated,
    BulkRunRequest,
    RegisterResponse,
    RollbackRequest,
    RunCreated,
    RunRequest,
    VersionView,
    WorkflowNameParam,
    WorkflowView,
    errors,
)
from services.api.state import ApiState

_JSON = msgspec.json.Encoder()
SCOPE = "ratchet.api"

# Shown in the OpenAPI description (app.py); docs/versions.md says the same at more length.
VERSIONS_DOC = """\
## Workflow versions

Every distinct definition of a workflow is a version (content-hashed; `GET
/workflows/{name}/versions`). A run is pinned to the version it started on and keeps it to the
end, whatever happens to the workflow meanwhile. One version is **current**: new runs start on
it, whether triggered through the API, by a matching event or by a cron or scheduled run.

- Registering a definition never seen before makes it current (a deploy takes effect).
- Registering a definition that already has a version does not move the pointer: a worker
  restarting with older code, or an old replica during a rolling deploy, cannot undo a newer
  deploy or a rollback. The response says whether the version is current.
- `POST /workflows/{name}/rollback` with `{"version_id": ...}` makes any version of the
  workflow current (older or newer), including its `on_crons`. It lasts until the next rollback
  or the next registration of a definition never seen before. To go back to code that is
  already registered (a revert), roll back to its version: deploying it again is not enough.
- `POST /workflows/{name}/run` with `version_id` starts that one run on the given version.
"""

# W3C trace context of the caller: the run's trace continues the caller's.
TraceParent = Annotated[str | None, HeaderParameter(name="traceparent", required=False)]


class WorkflowController(Controller):
    path = "/workflows"
    tags = ["workflows"]
    guards = [requires(Scope.READ, Scope.WORKER)]

    # A worker registers the workflows it serves when it starts, so `worker` may too.
    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE, Scope.WORKER)],
          operation_id="registerWorkflow")
    async def register(self, data: specs.WorkflowSpec, tenant: Tenant, api: Api) -> RegisterResponse:
        """Register a workflow definition. A definition never seen before becomes a new, current
        version; an identical one is the same version and leaves the current one alone."""
        try:
            specs.validate(data)
        except specs.SpecError as exc:
            raise ClientException(str(exc)) from exc
        check_fairness(data)
        problem = schema_problem(data.input_schema)
        if problem is not None:
            raise ClientException(problem)
        reg = await api.workflows.register(
            tenant, data, workflow_crons(tenant, data), specs.static_rate_limit_keys(data)
        )
        if reg.current:
            await notify_matcher(api, tenant)
        return RegisterResponse(
            id=reg.version_id, name=data.name, hash=reg.hash, created=reg.created,
            current=reg.current,
        )

    @get("/", operation_id="listWorkflows")
    async def list_workflows(self, tenant: Tenant, api: Api) -> list[WorkflowView]:
        return [_view(r) for r in await api.workflows.list_current(tenant)]

    @get("/{name:str}", operation_id="getWorkflow", responses=errors(404))
    async def get_workflow(self, name: WorkflowNameParam, tenant: Tenant, api: Api) -> WorkflowView:
        """The workflow's current version."""
        return _view(await api.workflows.get_current(tenant, name))

    @get("/{name:str}/versions", operation_id="listWorkflowVersions", responses=errors(404))
    async def versions(
        self, name: WorkflowNameParam, tenant: Tenant, api: Api,
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> list[VersionView]:
        """The workflow's versions, newest first; `current` marks the one new runs use."""
        return [_version_view(v) for v in await api.workflows.versions(tenant, name, limit)]

    @post("/{name:str}/rollback", status_code=HTTP_200_OK, guards=[requires(Scope.WRITE)],
          operation_id="rollbackWorkflow", responses=errors(404))
    async def rollback(
        self, name: WorkflowNameParam, data: RollbackRequest, tenant: Tenant, api: Api,
        caller: Caller,
    ) -> VersionView:
        """Make a version of the workflow current: new runs (API, events, crons) start on it;
        runs already started keep theirs. 404 when the version is not one of this workflow's."""
        version = await api.workflows.make_current(
            tenant, name, data.version_id, lambda spec: workflow_crons(tenant, spec),
            audit_entry(caller, "workflow.rollback", name, {"version_id": data.version_id}),
        )
        await notify_matcher(api, tenant)
        return _version_view(version)

    @post("/{name:str}/run", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="triggerWorkflow", responses=errors(404, 422, 429))
    async def trigger(
        self, name: WorkflowNameParam, data: RunRequest, tenant: Tenant, api: Api, caller: Caller,
        traceparent: TraceParent = None,
    ) -> RunCreated:
        """Start a run on the current version of a workflow, or on `version_id` if given."""
        version = await _version(api, tenant, name, data.version_id)
        trig = _trigger(api, name, version, data)
        if data.parent is not None:  # a child run: it may exist already (a retried parent)
            await children.adopt_parents(api.runs, api.settings, tenant, [(trig, data.parent)])
        if await children.not_started(api.runs, tenant, [trig]):
            await admit_triggers(api, tenant, 1)
            await _offload_input(api, tenant, trig)
            await api.audit.record(
                audit_entry(caller, "run.trigger", trig.run_id, {"workflow": name}))
            with _trigger_span(tenant, name, traceparent, [trig]):
                await jetstream.publish_one(api.js, _outgoing(tenant, trig))
            metrics.API_RUNS_TRIGGERED.inc()
        return RunCreated(run_id=trig.run_id, workflow=name, version_id=version.id)

    @post("/{name:str}/run/bulk", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="triggerWorkflowBulk", responses=errors(404, 422, 429))
    async def trigger_bulk(
        self, name: WorkflowNameParam, data: BulkRunRequest, tenant: Tenant, api: Api,
        caller: Caller,
        traceparent: TraceParent = None,
    ) -> BulkRunCreated:
        """Start many runs in one request (up to 1,000), published pipelined."""
        if not 1 <= len(data.runs) <= 1000:
            raise ClientException("runs must hold 1 to 1000 items")
        versions: dict[str | None, Version] = {}
        for req in data.runs:
            if req.version_id not in versions:
                versions[req.version_id] = await _version(api, tenant, name, req.version_id)
        trigs = [_trigger(api, name, versions[r.version_id], r) for r in data.runs]
        spawned = [(t, r.parent) for t, r in zip(trigs, data.runs, strict=True) if r.parent]
        if spawned:
            await children.adopt_parents(api.runs, api.settings, tenant, spawned)
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
        return BulkRunCreated(run_ids=[t.run_id for t in trigs])


def _view(row: Any) -> WorkflowView:
    return WorkflowView(
        name=row["name"],
        version_id=row["version_id"],
        spec=msgspec.json.decode(row["spec"]),
        updated_at=row["updated_at"].isoformat(),
    )


def _version_view(version: VersionInfo) -> VersionView:
    return VersionView(
        id=version.id, hash=version.hash, created_at=version.created_at.isoformat(),
        current=version.current,
    )


async def _version(api: ApiState, tenant: str, name: str, version_id: str | None) -> Version:
    if version_id is None:
        return await api.workflows.current(tenant, name)
    return await api.workflows.version(tenant, name, version_id)


def _trigger(api: ApiState, name: str, version: Version, req: RunRequest) -> TriggerRun:
    if req.priority is not None and not 1 <= req.priority <= 3:
        raise ClientException("priority must be 1, 2 or 3")
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
    trig.input = await offload(api, tenant, trig.run_id, trig.input)


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
