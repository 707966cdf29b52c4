"""Task logs: a run's log in order, and substring search over a tenant's logs."""

from __future__ import annotations

from litestar import Controller, get
from litestar.params import Parameter

from libs.common.specs import INT32_MAX
from libs.common.tokens import Scope
from services.api.actions import logs
from services.api.actions.analytics import parse_instant
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.analytics import Instant
from services.api.schemas.logs import LogLineView


class LogController(Controller):
    """Lines from `ctx.log()` (and captured `logging` records) reach the store about a second
    after the task wrote them."""
    guards = [requires(Scope.READ)]

    path = "/"
    tags = ["logs"]

    @get("/runs/{run_id:str}/logs", operation_id="getRunLogs", responses=errors(404, 503))
    async def run_logs(
        self, run_id: str, tenant: Tenant, api: Api,
        limit: int = Parameter(default=10_000, ge=1, le=100_000),
        offset: int = Parameter(default=0, ge=0, le=INT32_MAX),
    ) -> list[LogLineView]:
        """The run's log lines in order (time, then task, attempt and position)."""
        return await logs.run_logs(api, tenant, run_id, limit, offset)

    @get("/logs", operation_id="searchLogs", responses=errors(503))
    async def search(
        self, tenant: Tenant, api: Api,
        q: str = Parameter(default="", max_length=1000, description="substring, any case"),
        workflow: str | None = Parameter(default=None, min_length=1, max_length=128),
        since: Instant = None,
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> list[LogLineView]:
        """Log lines of this tenant's tasks containing `q`, newest first."""
        return await logs.search(api, tenant, q, workflow, parse_instant("since", since), limit)
