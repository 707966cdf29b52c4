"""Workflow registration and run triggers."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import HeaderParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED
from opentelemetry.trace import SpanKind

from libs.common import jetstream, metrics, specs, subjects, telemetry
from libs.common.jetstream import Outgoing
from libs.common.messages import TRIGGER_BATCH_BYTES, TriggerRun, TriggerRuns, encode
from libs.common.subjects import Header
from services.api.auth import Api, Tenant
from services.api.input_schema import check_input
from services.api.routes.crons import workflow_changed
from services.api.routes.rate_limits import check_fairness
from services.api.schemas import (
    BulkRunCreated,
    BulkRunRequest,
    RegisterResponse,
    RunCreated,
    RunRequest,
    WorkflowView,
)
from services.api.state import ApiState

_JSON = msgspec.json.Encoder()
SCOPE = "ratchet.api"
# W3C trace context of the caller: the run's trace continues the caller's.
TraceParent = Annotated[str | None, HeaderParameter(name="traceparent", required=False)]


class WorkflowController(Controller):
    path = "/workflows"
    tags = ["workflows"]

    @post("/", status_code=HTTP_201_CREATED)
    async def register(self, data: specs.WorkflowSpec, tenant: Tenant, api: Api) -> RegisterResponse:
        """Register a workflow version. Identical definitions are the same version (no-op)."""
        try:
            specs.validate(data)
        except specs.SpecError as exc:
            raise ClientException(str(exc)) from exc
        await check_fairness(api.pool, tenant, data)
        digest = specs.content_hash(data)
        version_id = "wv_" + hashlib.sha256(f"{tenant}/{digest}".encode()).hexdigest()[:24]
        spec_json = _JSON.encode(data).decode()
        async with api.pool.acquire() as conn, conn.transaction():
            created = await conn.fetchval(
                "INSERT INTO workflow_versions (id, tenant_id, name, hash, spec)"
                " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING RETURNING true",
                version_id, tenant, data.name, digest, spec_json,
            )
            await conn.execute(
                "INSERT INTO workflows (tenant_id, name, latest_version_id) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant_id, name) DO UPDATE SET latest_version_id ="
                " EXCLUDED.latest_version_id, updated_at = now()"
                " WHERE workflows.latest_version_id <> EXCLUDED.latest_version_id",
                tenant, data.name, version_id,
            )
        api.cache_version(tenant, data.name, version_id, spec_json)
        await workflow_changed(api, tenant, data)  # on_crons rows + matcher cache invalidation
        return RegisterResponse(id=version_id, name=data.name, hash=digest, created=bool(created))

    @get("/")
    async def list_workflows(self, tenant: Tenant, api: Api) -> list[WorkflowView]:
        rows = await api.pool.fetch(
            "SELECT w.name, w.latest_version_id, v.spec::text AS spec, w.updated_at"
            " FROM workflows w JOIN workflow_versions v ON v.id = w.latest_version_id"
            " WHERE w.tenant_id = $1 ORDER BY w.name",
            tenant,
        )
        return [_view(r) for r in rows]

    @get("/{name:str}")
    async def get_workflow(self, name: str, tenant: Tenant, api: Api) -> WorkflowView:
        row = await api.pool.fetchrow(
            "SELECT w.name, w.latest_version_id, v.spec::text AS spec, w.updated_at"
            " FROM workflows w JOIN workflow_versions v ON v.id = w.latest_version_id"
            " WHERE w.tenant_id = $1 AND w.name = $2",
            tenant, name,
        )
        if row is None:
            raise NotFoundException(f"workflow {name!r} not found")
        return _view(row)

    @post("/{name:str}/run", status_code=HTTP_202_ACCEPTED)
    async def trigger(
        self, name: str, data: RunRequest, tenant: Tenant, api: Api,
        traceparent: TraceParent = None,
    ) -> RunCreated:
        """Start a run of the latest version of a workflow."""
        version_id, spec = await _latest(api, tenant, name)
        trig = _trigger(name, version_id, spec, data)
        with _trigger_span(tenant, name, traceparent, [trig]):
            await jetstream.publish_one(api.js, _outgoing(tenant, trig))
        metrics.API_RUNS_TRIGGERED.inc()
        return RunCreated(run_id=trig.run_id, workflow=name, version_id=version_id)

    @post("/{name:str}/run/bulk", status_code=HTTP_202_ACCEPTED)
    async def trigger_bulk(
        self, name: str, data: BulkRunRequest, tenant: Tenant, api: Api,
        traceparent: TraceParent = None,
    ) -> BulkRunCreated:
        """Start many runs in one request (up to 1,000), published pipelined."""
        if not 1 <= len(data.runs) <= 1000:
            raise ClientException("runs must hold 1 to 1000 items")
        version_id, spec = await _latest(api, tenant, name)
        trigs = [_trigger(name, version_id, spec, r) for r in data.runs]
        with _trigger_span(tenant, name, traceparent, trigs):
            await jetstream.publish_batch(api.js, _bulk_outgoing(tenant, trigs))
        metrics.API_RUNS_TRIGGERED.inc(len(trigs))
        return BulkRunCreated(run_ids=[t.run_id for t in trigs])


def _view(row: Any) -> WorkflowView:
    return WorkflowView(
        name=row["name"],
        version_id=row["latest_version_id"],
        spec=msgspec.json.decode(row["spec"]),
        updated_at=row["updated_at"].isoformat(),
    )


async def _latest(api: ApiState, tenant: str, name: str) -> tuple[str, specs.WorkflowSpec]:
    cached = api.cached_version(tenant, name)
    if cached is None:
        row = await api.pool.fetchrow(
            "SELECT w.latest_version_id, v.spec::text AS spec FROM workflows w"
            " JOIN workflow_versions v ON v.id = w.latest_version_id"
            " WHERE w.tenant_id = $1 AND w.name = $2",
            tenant, name,
        )
        if row is None:
            raise NotFoundException(f"workflow {name!r} not found")
        cached = (row["latest_version_id"], row["spec"])
        api.cache_version(tenant, name, cached[0], cached[1])
    return cached[0], api.spec_of(cached[0], cached[1])


def _trigger(name: str, version_id: str, spec: specs.WorkflowSpec, req: RunRequest) -> TriggerRun:
    if req.priority is not None and not 1 <= req.priority <= 3:
        raise ClientException("priority must be 1, 2 or 3")
    check_input(spec, req.input)
    return TriggerRun(
        run_id=uuid.uuid4().hex,
        workflow=name,
        version_id=version_id,
        input=_JSON.encode(req.input if req.input is not None else {}),
        metadata=req.metadata,
        priority=req.priority,
    )


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
