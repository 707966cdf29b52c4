"""Crons (`/crons`) and one-off scheduled runs (`/scheduled`); the scheduler fires them.

Rows written here carry `next_due_at` / `run_at`; `services.scheduler.cron.CronTicker`
claims them when due. Workflow `on_crons` become rows with origin 'workflow', kept in step
with the current version: `workflow_crons` builds them, and the workflow repository stores
them in the transaction that moves the current-version pointer.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from libs.common.cronexpr import cron_problem, next_tick
from libs.common.specs import Cron, WorkflowSpec
from libs.common.tokens import Scope
from services.api.auth import Api, Caller, Tenant, requires
from services.api.repos.crons import WorkflowCron
from services.api.routes.tokens import audit_entry
from services.api.schemas import WorkflowName, errors
from services.api.state import ApiState

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()


class CronIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workflow: WorkflowName
    expression: Cron
    input: Any = None
    metadata: dict[str, str] = {}
    name: str | None = None


class CronView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    name: str
    expression: str
    input: Any
    metadata: dict[str, str]
    origin: str  # api | workflow
    next_due_at: str
    last_tick: str | None
    created_at: str


class ScheduledIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workflow: WorkflowName
    run_at: datetime
    input: Any = None
    metadata: dict[str, str] = {}


class ScheduledView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    run_at: str
    input: Any
    metadata: dict[str, str]
    run_id: str  # the run it starts, known in advance
    fired_at: str | None
    created_at: str


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _cron_view(row: Any) -> CronView:
    return CronView(
        id=row["id"], workflow=row["workflow"], name=row["name"], expression=row["expression"],
        input=msgspec.json.decode(row["input"]), metadata=msgspec.json.decode(row["metadata"]),
        origin=row["origin"], next_due_at=row["next_due_at"].isoformat(),
        last_tick=_iso(row["last_tick"]), created_at=row["created_at"].isoformat(),
    )


def _scheduled_view(row: Any) -> ScheduledView:
    return ScheduledView(
        id=row["id"], workflow=row["workflow"], run_at=row["run_at"].isoformat(),
        input=msgspec.json.decode(row["input"]), metadata=msgspec.json.decode(row["metadata"]),
        run_id=row["run_id"], fired_at=_iso(row["fired_at"]),
        created_at=row["created_at"].isoformat(),
    )


async def _checked_input(api: ApiState, tenant: str, workflow: str, value: Any) -> str:
    """The run input as JSON, validated against the workflow's current input schema."""
    version = await api.workflows.current(tenant, workflow)
    value = value if value is not None else {}
    api.inputs.check(version.id, version.spec, value)
    return _JSON.encode(value).decode()


class CronController(Controller):
    path = "/crons"
    tags = ["crons"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createCron", responses=errors(404, 409, 422))
    async def create(self, data: CronIn, tenant: Tenant, api: Api, caller: Caller) -> CronView:
        """Run a workflow on a cron schedule (UTC; 5 fields, or 6 with seconds first)."""
        problem = cron_problem(data.expression)
        if problem:
            raise ClientException(problem)
        input_json = await _checked_input(api, tenant, data.workflow, data.input)
        cron_id = "cron_" + uuid.uuid4().hex
        row = await api.crons.create(
            tenant, cron_id, data.workflow, data.name or cron_id, data.expression, input_json,
            _JSON.encode(data.metadata).decode(), next_tick(data.expression, datetime.now(UTC)),
            audit_entry(caller, "cron.create", cron_id,
                        {"workflow": data.workflow, "expression": data.expression}),
        )
        return _cron_view(row)

    @get("/", operation_id="listCrons")
    async def list_crons(
        self, tenant: Tenant, api: Api, workflow: str | None = None,
        limit: int = Parameter(default=1000, ge=1, le=10_000),
    ) -> list[CronView]:
        return [_cron_view(r) for r in await api.crons.list_crons(tenant, workflow, limit)]

    @get("/{cron_id:str}", operation_id="getCron", responses=errors(404))
    async def get_cron(self, cron_id: str, tenant: Tenant, api: Api) -> CronView:
        row = await api.crons.get(tenant, cron_id)
        if row is None:
            raise NotFoundException(f"cron {cron_id!r} not found")
        return _cron_view(row)

    @delete("/{cron_id:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteCron", responses=errors(400, 404))
    async def delete_cron(self, cron_id: str, tenant: Tenant, api: Api, caller: Caller) -> None:
        """Delete a cron made through the API (400 for one from a workflow's on_crons)."""
        row = await api.crons.get(tenant, cron_id)
        if row is None:
            raise NotFoundException(f"cron {cron_id!r} not found")
        if row["origin"] == "workflow":
            raise ClientException("this cron comes from the workflow's on_crons; change the workflow")
        await api.crons.delete(tenant, cron_id, audit_entry(caller, "cron.delete", cron_id))


class ScheduledController(Controller):
    path = "/scheduled"
    tags = ["scheduled"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createScheduledRun", responses=errors(404, 422))
    async def create(self, data: ScheduledIn, tenant: Tenant, api: Api) -> ScheduledView:
        """Run a workflow once at `run_at` (timezone-aware ISO-8601; a past time runs now)."""
        if data.run_at.tzinfo is None:
            raise ClientException("run_at must be timezone-aware (e.g. 2026-12-01T09:00:00Z)")
        input_json = await _checked_input(api, tenant, data.workflow, data.input)
        row = await api.scheduled.create(
            tenant, "sch_" + uuid.uuid4().hex, data.workflow, data.run_at, input_json,
            _JSON.encode(data.metadata).decode(), uuid.uuid4().hex,
        )
        return _scheduled_view(row)

    @get("/", operation_id="listScheduledRuns")
    async def list_scheduled(
        self, tenant: Tenant, api: Api, workflow: str | None = None,
        limit: int = Parameter(default=1000, ge=1, le=10_000),
    ) -> list[ScheduledView]:
        rows = await api.scheduled.list_scheduled(tenant, workflow, limit)
        return [_scheduled_view(r) for r in rows]

    @get("/{scheduled_id:str}", operation_id="getScheduledRun", responses=errors(404))
    async def get_scheduled(self, scheduled_id: str, tenant: Tenant, api: Api) -> ScheduledView:
        row = await api.scheduled.get(tenant, scheduled_id)
        if row is None:
            raise NotFoundException(f"scheduled run {scheduled_id!r} not found")
        return _scheduled_view(row)

    @delete("/{scheduled_id:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteScheduledRun", responses=errors(404))
    async def delete_scheduled(self, scheduled_id: str, tenant: Tenant, api: Api) -> None:
        """Cancel a scheduled run that has not fired yet (a fired one is just forgotten)."""
        if not await api.scheduled.delete(tenant, scheduled_id):
            raise NotFoundException(f"scheduled run {scheduled_id!r} not found")


def workflow_cron_id(tenant: str, workflow: str, expression: str) -> str:
    return "wc_" + hashlib.sha256(f"{tenant}/{workflow}/{expression}".encode()).hexdigest()[:24]


def workflow_crons(tenant: str, spec: WorkflowSpec) -> list[WorkflowCron]:
    """The crons a workflow version declares in `on_crons`, each due at its next tick.

    Registration rejects bad expressions; one that still fails here (stored before that check
    existed) is skipped with a warning rather than failing a rollback.
    """
    now = datetime.now(UTC)
    crons: list[WorkflowCron] = []
    for expression in dict.fromkeys(spec.on_crons):
        problem = cron_problem(expression)
        if problem:
            log.warning("workflow %s of %s: on_crons entry skipped: %s", spec.name, tenant, problem,
                        extra={"tenant": tenant, "workflow": spec.name})
            continue
        crons.append(WorkflowCron(
            id=workflow_cron_id(tenant, spec.name, expression), name=f"on_crons:{expression}",
            expression=expression, next_due_at=next_tick(expression, now),
        ))
    return crons
