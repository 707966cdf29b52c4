"""Task logs: a run's log in order, and substring search over a tenant's logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Controller, get
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

from libs.common.specs import INT32_MAX
from libs.common.tokens import Scope
from services.api.auth import Api, Tenant, requires
from services.api.repos.logs import LogRepo
from services.api.routes.analytics import Instant, parse_instant
from services.api.schemas import errors
from services.api.state import ApiState

DEFAULT_SEARCH_RANGE = timedelta(days=7)


class LogLineView(msgspec.Struct):
    task: str
    attempt: int
    ts: str
    level: str
    message: str
    run_id: str
    workflow: str


def _view(row: dict[str, Any]) -> LogLineView:
    ts = datetime.fromtimestamp(int(row["ts_ms"]) / 1000, UTC)
    return LogLineView(
        task=row["task"], attempt=int(row["attempt"]), ts=ts.isoformat(timespec="milliseconds"),
        level=row["level"], message=row["message"], run_id=row["run_id"],
        workflow=row["workflow"],
    )


def _repo(api: ApiState) -> LogRepo:
    return LogRepo(api.olap)


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
        if await api.runs.status(tenant, run_id) is None:
            raise NotFoundException(f"run {run_id!r} not found")
        rows = await _repo(api).run_logs(tenant, run_id, limit=limit, offset=offset)
        return [_view(r) for r in rows]

    @get("/logs", operation_id="searchLogs", responses=errors(503))
    async def search(
        self, tenant: Tenant, api: Api,
        q: str = Parameter(default="", max_length=1000, description="substring, any case"),
        workflow: str | None = Parameter(default=None, min_length=1, max_length=128),
        since: Instant = None,
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> list[LogLineView]:
        """Log lines of this tenant's tasks containing `q`, newest first."""
        given = parse_instant("since", since)  # default: DEFAULT_SEARCH_RANGE ago
        start = datetime.now(UTC) - DEFAULT_SEARCH_RANGE if given is None else given
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        rows = await _repo(api).search(tenant, q, workflow=workflow, since=start, limit=limit)
        return [_view(r) for r in rows]
