"""Event filters: create, change and delete (each audited, each announced to the matchers),
and the view the REST API and the dashboard list.

Expressions are compiled (and sandbox-checked) here, so a bad one is a 400 naming its
position instead of a matcher error later.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from libs.common import events as evt
from libs.common.cel import CelError, compile_filter
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.actions.matcher import notify_matcher
from services.api.repos.errors import Invalid, NotFound
from services.api.repos.filters import FilterFields
from services.api.schemas.filters import FilterIn, FilterPatch, FilterView
from services.api.state import ApiState

_JSON = msgspec.json.Encoder()


def _check(workflow: str, expression: str, scope: str | None) -> None:
    if not workflow or len(workflow) > 128:
        raise Invalid("workflow must be 1-128 characters")
    if scope is not None:
        problem = evt.header_problem("scope", scope, evt.MAX_SCOPE_CHARS)
        if problem:
            raise Invalid(problem)
    try:
        compile_filter(expression)
    except CelError as exc:
        raise Invalid(
            f"invalid expression: {exc}", extra={"line": exc.line, "column": exc.column}
        ) from exc


def filter_view(row: Any) -> FilterView:
    return FilterView(
        id=row["id"], workflow=row["workflow"], scope=row["scope"],
        expression=row["expression"],
        payload=msgspec.json.decode(row["payload"]) if row["payload"] is not None else None,
        created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(),
    )


def _payload_json(payload: Any) -> str | None:
    return _JSON.encode(payload).decode() if payload is not None else None


async def list_filters(
    api: ApiState, tenant: str, workflow: str | None = None, limit: int = 1000
) -> list[FilterView]:
    return [filter_view(r) for r in await api.filters.list_filters(tenant, workflow, limit)]


async def get_filter(api: ApiState, tenant: str, filter_id: str) -> FilterView:
    row = await api.filters.get(tenant, filter_id)
    if row is None:
        raise NotFound(f"filter {filter_id!r} not found")
    return filter_view(row)


async def create_filter(api: ApiState, caller: Principal, data: FilterIn) -> FilterView:
    """Create a filter (`Invalid` naming the position of a bad expression)."""
    _check(data.workflow, data.expression, data.scope)
    fields = FilterFields(data.workflow, data.scope, data.expression, _payload_json(data.payload))
    filter_id = "flt_" + uuid.uuid4().hex
    entry = audit_entry(caller, "filter.create", filter_id, {"workflow": data.workflow})
    row = await api.filters.create(caller.tenant, filter_id, fields, entry)
    await notify_matcher(api.nc, caller.tenant)
    return filter_view(row)


async def update_filter(
    api: ApiState, caller: Principal, filter_id: str, data: FilterPatch
) -> FilterView:
    """Change the fields present in `data`; the new expression is compiled first."""

    def change(row: Any) -> FilterFields:
        current = filter_view(row)
        workflow = current.workflow if data.workflow is msgspec.UNSET else data.workflow
        expression = current.expression if data.expression is msgspec.UNSET else data.expression
        scope = current.scope if data.scope is msgspec.UNSET else data.scope
        payload = current.payload if data.payload is msgspec.UNSET else data.payload
        _check(workflow, expression, scope)
        return FilterFields(workflow, scope, expression, _payload_json(payload))

    entry = audit_entry(caller, "filter.update", filter_id)
    row = await api.filters.update(caller.tenant, filter_id, change, entry)
    if row is None:
        raise NotFound(f"filter {filter_id!r} not found")
    await notify_matcher(api.nc, caller.tenant)
    return filter_view(row)


async def delete_filter(api: ApiState, caller: Principal, filter_id: str) -> None:
    entry = audit_entry(caller, "filter.delete", filter_id)
    if not await api.filters.delete(caller.tenant, filter_id, entry):
        raise NotFound(f"filter {filter_id!r} not found")
    await notify_matcher(api.nc, caller.tenant)
