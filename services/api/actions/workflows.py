"""Workflows: registration, rollback, and the views of workflows and their versions.

Triggering a run is `actions.trigger`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from libs.common import specs
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.actions.crons import workflow_crons
from services.api.actions.matcher import notify_matcher
from services.api.actions.rate_limits import check_fairness
from services.api.input_schema import schema_problem
from services.api.repos.errors import Invalid
from services.api.repos.workflows import VersionInfo
from services.api.schemas import RegisterResponse, VersionView, WorkflowView
from services.api.state import ApiState


def workflow_view(row: Any) -> WorkflowView:
    return WorkflowView(
        name=row["name"],
        version_id=row["version_id"],
        spec=msgspec.json.decode(row["spec"]),
        updated_at=row["updated_at"].isoformat(),
    )


def version_view(version: VersionInfo) -> VersionView:
    return VersionView(
        id=version.id, hash=version.hash, created_at=version.created_at.isoformat(),
        current=version.current,
    )


async def list_workflows(api: ApiState, tenant: str) -> list[WorkflowView]:
    return [workflow_view(r) for r in await api.workflows.list_current(tenant)]


async def get_workflow(api: ApiState, tenant: str, name: str) -> WorkflowView:
    """The workflow's current version (`NotFound` for no such workflow)."""
    return workflow_view(await api.workflows.get_current(tenant, name))


async def versions(api: ApiState, tenant: str, name: str, limit: int = 1000) -> list[VersionView]:
    """The workflow's versions, newest first; `current` marks the one new runs use."""
    return [version_view(v) for v in await api.workflows.versions(tenant, name, limit)]


async def register(api: ApiState, tenant: str, data: specs.WorkflowSpec) -> RegisterResponse:
    """Register a definition: one never seen before becomes a new, current version (and the
    matchers hear of it); an identical one is the same version and leaves the current one."""
    try:
        specs.validate(data)
    except specs.SpecError as exc:
        raise Invalid(str(exc)) from exc
    check_fairness(data)
    problem = schema_problem(data.input_schema)
    if problem is not None:
        raise Invalid(problem)
    reg = await api.workflows.register(
        tenant, data, workflow_crons(tenant, data), specs.static_rate_limit_keys(data)
    )
    if reg.current:
        await notify_matcher(api.nc, tenant)
    return RegisterResponse(
        id=reg.version_id, name=data.name, hash=reg.hash, created=reg.created,
        current=reg.current,
    )


async def rollback(api: ApiState, caller: Principal, name: str, version_id: str) -> VersionView:
    """Make a version of the workflow current (`NotFound` when it is not one of its versions)."""
    tenant = caller.tenant
    version = await api.workflows.make_current(
        tenant, name, version_id, lambda spec: workflow_crons(tenant, spec),
        audit_entry(caller, "workflow.rollback", name, {"version_id": version_id}),
    )
    await notify_matcher(api.nc, tenant)
    return version_view(version)
