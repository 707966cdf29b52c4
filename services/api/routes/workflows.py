"""Workflow registration and run triggers."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from libs.common import jetstream, specs, subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import TriggerRun, encode
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
    async def trigger(self, name: str, data: RunRequest, tenant: Tenant, api: Api) -> RunCreated:
        """Start a run of the latest version of a workflow."""
        version_id, spec = await _latest(api, tenant, name)
        trig = _trigger(name, version_id, spec, data)
        await jetstream.publish_one(api.js, _outgoing(tenant, trig))
        return RunCreated(run_id=trig.run_id, workflow=name, version_id=version_id)

    @post("/{name:str}/run/bulk", status_code=HTTP_202_ACCEPTED)
    async def trigger_bulk(
        self, name: str, data: BulkRunRequest, tenant: Tenant, api: Api
    ) -> BulkRunCreated:
        """Start many runs in one request (up to 1,000), published pipelined."""
        if not 1 <= len(data.runs) <= 1000:
            raise ClientException("runs must hold 1 to 1000 items")
        version_id, spec = await _latest(api, tenant, name)
        trigs = [_trigger(name, version_id, spec, r) for r in data.runs]
        await jetstream.publish_batch(api.js, [_outgoing(tenant, t) for t in trigs])
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


def _outgoing(tenant: str, trig: TriggerRun) -> Outgoing:
    return Outgoing(subjects.cmd(tenant, "run.trigger"), encode(trig), f"run:{trig.run_id}:trigger")
