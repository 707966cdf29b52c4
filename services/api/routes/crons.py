"""Crons (`/crons`) and one-off scheduled runs (`/scheduled`); the scheduler fires them.

What each request does (and the crons a workflow's `on_crons` become) is
`services.api.actions.crons`.
"""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from libs.common.tokens import Scope
from services.api.actions import crons
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.crons import CronIn, CronView, ScheduledIn, ScheduledView


class CronController(Controller):
    path = "/crons"
    tags = ["crons"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createCron", responses=errors(404, 409, 422))
    async def create(self, data: CronIn, tenant: Tenant, api: Api, caller: Caller) -> CronView:
        """Run a workflow on a cron schedule (UTC; 5 fields, or 6 with seconds first)."""
        return await crons.create_cron(api, caller, data)

    @get("/", operation_id="listCrons")
    async def list_crons(
        self, tenant: Tenant, api: Api, workflow: str | None = None,
        limit: int = Parameter(default=1000, ge=1, le=10_000),
    ) -> list[CronView]:
        return await crons.list_crons(api, tenant, workflow, limit)

    @get("/{cron_id:str}", operation_id="getCron", responses=errors(404))
    async def get_cron(self, cron_id: str, tenant: Tenant, api: Api) -> CronView:
        return await crons.get_cron(api, tenant, cron_id)

    @delete("/{cron_id:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteCron", responses=errors(400, 404))
    async def delete_cron(self, cron_id: str, tenant: Tenant, api: Api, caller: Caller) -> None:
        """Delete a cron made through the API (400 for one from a workflow's on_crons)."""
        await crons.delete_cron(api, caller, cron_id)


class ScheduledController(Controller):
    path = "/scheduled"
    tags = ["scheduled"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createScheduledRun", responses=errors(404, 422))
    async def create(self, data: ScheduledIn, tenant: Tenant, api: Api) -> ScheduledView:
        """Run a workflow once at `run_at` (timezone-aware ISO-8601; a past time runs now)."""
        return await crons.create_scheduled(api, tenant, data)

    @get("/", operation_id="listScheduledRuns")
    async def list_scheduled(
        self, tenant: Tenant, api: Api, workflow: str | None = None,
        limit: int = Parameter(default=1000, ge=1, le=10_000),
    ) -> list[ScheduledView]:
        return await crons.list_scheduled(api, tenant, workflow, limit)

    @get("/{scheduled_id:str}", operation_id="getScheduledRun", responses=errors(404))
    async def get_scheduled(self, scheduled_id: str, tenant: Tenant, api: Api) -> ScheduledView:
        return await crons.get_scheduled(api, tenant, scheduled_id)

    @delete("/{scheduled_id:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteScheduledRun", responses=errors(404))
    async def delete_scheduled(self, scheduled_id: str, tenant: Tenant, api: Api) -> None:
        """Cancel a scheduled run that has not fired yet (a fired one is just forgotten)."""
        await crons.delete_scheduled(api, tenant, scheduled_id)
