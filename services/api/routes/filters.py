"""Event filters: CEL expressions that decide which events of a workflow start a run.

Expressions are compiled (and sandbox-checked) here, so a bad one is a 400 naming its
position instead of a matcher error later. Every change tells the matchers to drop the
tenant's cached rules (core NATS, best effort; their TTL is the safety net).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from libs.common import events as evt
from libs.common import subjects
from libs.common.cel import CelError, compile_filter
from libs.common.specs import Cel
from libs.common.tokens import Scope
from services.api.auth import Api, Caller, Tenant, requires
from services.api.repos.filters import FilterFields
from services.api.routes.tokens import audit_entry
from services.api.schemas import EventScope, WorkflowName, errors
from services.api.state import ApiState

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()


class FilterIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    workflow: WorkflowName
    expression: Cel
    scope: EventScope | None = None
    payload: Any = None


class FilterPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields present change; `"scope": null` clears the scope."""

    workflow: WorkflowName | msgspec.UnsetType = msgspec.UNSET
    expression: Cel | msgspec.UnsetType = msgspec.UNSET
    scope: EventScope | msgspec.UnsetType | None = msgspec.UNSET
    payload: Any = msgspec.UNSET


class FilterView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    scope: str | None
    expression: str
    payload: Any
    created_at: str
    updated_at: str


async def notify_matcher(api: ApiState, tenant: str) -> None:
    """Tell every matcher that the tenant's workflows or filters changed."""
    try:
        await api.nc.publish(subjects.MATCHER_CHANGES, tenant.encode())
        # Flushed so the change reaches the matchers before any event we accept next.
        await api.nc.flush(timeout=2)
    except Exception as exc:  # the change is committed; matchers catch up on their TTL
        log.warning("matcher invalidation for %s not sent: %r", tenant, exc,
                    extra={"tenant": tenant})


def _check(workflow: str, expression: str, scope: str | None) -> None:
    if not workflow or len(workflow) > 128:
        raise ClientException("workflow must be 1-128 characters")
    if scope is not None:
        problem = evt.header_problem("scope", scope, evt.MAX_SCOPE_CHARS)
        if problem:
            raise ClientException(problem)
    try:
        compile_filter(expression)
    except CelError as exc:
        raise ClientException(
            f"invalid expression: {exc}", extra={"line": exc.line, "column": exc.column}
        ) from exc


def _view(row: Any) -> FilterView:
    return FilterView(
        id=row["id"], workflow=row["workflow"], scope=row["scope"],
        expression=row["expression"],
        payload=msgspec.json.decode(row["payload"]) if row["payload"] is not None else None,
        created_at=row["created_at"].isoformat(), updated_at=row["updated_at"].isoformat(),
    )


def _payload_json(payload: Any) -> str | None:
    return _JSON.encode(payload).decode() if payload is not None else None


class FilterController(Controller):
    path = "/filters"
    tags = ["filters"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createFilter")
    async def create(self, data: FilterIn, tenant: Tenant, api: Api, caller: Caller) -> FilterView:
        """Create a filter. The expression sees `input`, `payload`, `metadata`, `event_key`."""
        _check(data.workflow, data.expression, data.scope)
        fields = FilterFields(data.workflow, data.scope, data.expression, _payload_json(data.payload))
        filter_id = "flt_" + uuid.uuid4().hex
        entry = audit_entry(caller, "filter.create", filter_id, {"workflow": data.workflow})
        row = await api.filters.create(tenant, filter_id, fields, entry)
        await notify_matcher(api, tenant)
        return _view(row)

    @get("/", operation_id="listFilters")
    async def list_filters(
        self, tenant: Tenant, api: Api, workflow: str | None = None,
        limit: int = Parameter(default=1000, ge=1, le=10_000),
    ) -> list[FilterView]:
        return [_view(r) for r in await api.filters.list_filters(tenant, workflow, limit)]

    @get("/{filter_id:str}", operation_id="getFilter", responses=errors(404))
    async def get_filter(self, filter_id: str, tenant: Tenant, api: Api) -> FilterView:
        row = await api.filters.get(tenant, filter_id)
        if row is None:
            raise NotFoundException(f"filter {filter_id!r} not found")
        return _view(row)

    @patch("/{filter_id:str}", guards=[requires(Scope.WRITE)], operation_id="updateFilter",
           responses=errors(404))
    async def update(
        self, filter_id: str, data: FilterPatch, tenant: Tenant, api: Api, caller: Caller
    ) -> FilterView:
        """Change some fields of a filter; the new expression is compiled first."""

        def change(row: Any) -> FilterFields:
            current = _view(row)
            workflow = current.workflow if data.workflow is msgspec.UNSET else data.workflow
            expression = (
                current.expression if data.expression is msgspec.UNSET else data.expression
            )
            scope = current.scope if data.scope is msgspec.UNSET else data.scope
            payload = current.payload if data.payload is msgspec.UNSET else data.payload
            _check(workflow, expression, scope)
            return FilterFields(workflow, scope, expression, _payload_json(payload))

        entry = audit_entry(caller, "filter.update", filter_id)
        row = await api.filters.update(tenant, filter_id, change, entry)
        if row is None:
            raise NotFoundException(f"filter {filter_id!r} not found")
        await notify_matcher(api, tenant)
        return _view(row)

    @delete("/{filter_id:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteFilter", responses=errors(404))
    async def delete_filter(self, filter_id: str, tenant: Tenant, api: Api, caller: Caller) -> None:
        entry = audit_entry(caller, "filter.delete", filter_id)
        if not await api.filters.delete(tenant, filter_id, entry):
            raise NotFoundException(f"filter {filter_id!r} not found")
        await notify_matcher(api, tenant)
