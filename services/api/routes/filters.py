"""Event filters: CEL expressions that decide which events of a workflow start a run.

Expressions are compiled (and sandbox-checked) before they are stored (actions/filters.py), so a bad one is a 400 naming its
position instead of a matcher error later. Every change tells the matchers to drop the
tenant's cached rules (core NATS, best effort; their TTL is the safety net).
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from libs.common.tokens import Scope
from services.api.actions import filters
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.filters import FilterIn, FilterPatch, FilterView


class FilterController(Controller):
    path = "/filters"
    tags = ["filters"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createFilter")
    async def create(self, data: FilterIn, tenant: Tenant, api: Api, caller: Caller) -> FilterView:
        """Create a filter. The expression sees `input`, `payload`, `metadata`, `event_key`."""
        return await filters.create_filter(api, caller, data)

    @get("/", operation_id="listFilters")
    async def list_filters(
        self, tenant: Tenant, api: Api, workflow: str | None = None,
        limit: int = Parameter(default=1000, ge=1, le=10_000),
    ) -> list[FilterView]:
        return await filters.list_filters(api, tenant, workflow, limit)

    @get("/{filter_id:str}", operation_id="getFilter", responses=errors(404))
    async def get_filter(self, filter_id: str, tenant: Tenant, api: Api) -> FilterView:
        return await filters.get_filter(api, tenant, filter_id)

    @patch("/{filter_id:str}", guards=[requires(Scope.WRITE)], operation_id="updateFilter",
           responses=errors(404))
    async def update(
        self, filter_id: str, data: FilterPatch, tenant: Tenant, api: Api, caller: Caller
    ) -> FilterView:
        """Change some fields of a filter; the new expression is compiled first."""
        return await filters.update_filter(api, caller, filter_id, data)

    @delete("/{filter_id:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteFilter", responses=errors(404))
    async def delete_filter(self, filter_id: str, tenant: Tenant, api: Api, caller: Caller) -> None:
        await filters.delete_filter(api, caller, filter_id)
