"""Crons and one-off scheduled runs: create and delete (the scheduler fires them), the views
both the REST API and the dashboard list, and the crons a workflow version declares.

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

from libs.common.cronexpr import cron_problem, next_tick
from libs.common.specs import WorkflowSpec
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.repos.crons import WorkflowCron
from services.api.repos.errors import Invalid, NotFound
from services.api.schemas.crons import CronIn, CronView, ScheduledIn, ScheduledView
from services.api.state import ApiState

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def cron_view(row: Any) -> CronView:
    return CronView(
        id=row["id"], workflow=row["workflow"], name=row["name"], expression=row["expression"],
        input=msgspec.json.decode(row["input"]), metadata=msgspec.json.decode(row["metadata"]),
        origin=row["origin"], next_due_at=row["next_due_at"].isoformat(),
        last_tick=_iso(row["last_tick"]), created_at=row["created_at"].isoformat(),
    )


def scheduled_view(row: Any) -> ScheduledView:
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


async def list_crons(
    api: ApiState, tenant: str, workflow: str | None = None, limit: int = 1000
) -> list[CronView]:
    return [cron_view(r) for r in await api.crons.list_crons(tenant, workflow, limit)]


async def get_cron(api: ApiState, tenant: str, cron_id: str) -> CronView:
    row = await api.crons.get(tenant, cron_id)
    if row is None:
        raise NotFound(f"cron {cron_id!r} not found")
    return cron_view(row)


async def create_cron(api: ApiState, caller: Principal, data: CronIn) -> CronView:
    """Run a workflow on a cron schedule (UTC; 5 fields, or 6 with seconds first).

    Raises:
        Invalid: a bad expression. NotFound: no such workflow. InputInvalid: a bad input.
    """
    problem = cron_problem(data.expression)
    if problem:
        raise Invalid(problem)
    tenant = caller.tenant
    input_json = await _checked_input(api, tenant, data.workflow, data.input)
    cron_id = "cron_" + uuid.uuid4().hex
    row = await api.crons.create(
        tenant, cron_id, data.workflow, data.name or cron_id, data.expression, input_json,
        _JSON.encode(data.metadata).decode(), next_tick(data.expression, datetime.now(UTC)),
        audit_entry(caller, "cron.create", cron_id,
                    {"workflow": data.workflow, "expression": data.expression}),
    )
    return cron_view(row)


async def delete_cron(api: ApiState, caller: Principal, cron_id: str) -> None:
    """Delete a cron made through the API (`Invalid` for one from a workflow's on_crons)."""
    row = await api.crons.get(caller.tenant, cron_id)
    if row is None:
        raise NotFound(f"cron {cron_id!r} not found")
    if row["origin"] == "workflow":
        raise Invalid("this cron comes from the workflow's on_crons; change the workflow")
    await api.crons.delete(caller.tenant, cron_id, audit_entry(caller, "cron.delete", cron_id))


async def list_scheduled(
    api: ApiState, tenant: str, workflow: str | None = None, limit: int = 1000
) -> list[ScheduledView]:
    return [scheduled_view(r) for r in await api.scheduled.list_scheduled(tenant, workflow, limit)]


async def get_scheduled(api: ApiState, tenant: str, scheduled_id: str) -> ScheduledView:
    row = await api.scheduled.get(tenant, scheduled_id)
    if row is None:
        raise NotFound(f"scheduled run {scheduled_id!r} not found")
    return scheduled_view(row)


async def create_scheduled(api: ApiState, tenant: str, data: ScheduledIn) -> ScheduledView:
    """Run a workflow once at `run_at` (timezone-aware; a past time runs now)."""
    if data.run_at.tzinfo is None:
        raise Invalid("run_at must be timezone-aware (e.g. 2026-12-01T09:00:00Z)")
    input_json = await _checked_input(api, tenant, data.workflow, data.input)
    row = await api.scheduled.create(
        tenant, "sch_" + uuid.uuid4().hex, data.workflow, data.run_at, input_json,
        _JSON.encode(data.metadata).decode(), uuid.uuid4().hex,
    )
    return scheduled_view(row)


async def delete_scheduled(api: ApiState, tenant: str, scheduled_id: str) -> None:
    """Cancel a scheduled run that has not fired yet (a fired one is just forgotten)."""
    if not await api.scheduled.delete(tenant, scheduled_id):
        raise NotFound(f"scheduled run {scheduled_id!r} not found")


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
