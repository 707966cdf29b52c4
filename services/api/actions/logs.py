"""Task logs: a run's log in order, and substring search over a tenant's logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.api.actions.runs import require_run
from services.api.repos.logs import LogRepo
from services.api.schemas.logs import LogLineView
from services.api.state import ApiState

DEFAULT_SEARCH_RANGE = timedelta(days=7)


def _view(row: dict[str, Any]) -> LogLineView:
    ts = datetime.fromtimestamp(int(row["ts_ms"]) / 1000, UTC)
    return LogLineView(
        task=row["task"], attempt=int(row["attempt"]), ts=ts.isoformat(timespec="milliseconds"),
        level=row["level"], message=row["message"], run_id=row["run_id"],
        workflow=row["workflow"],
    )


async def run_logs(
    api: ApiState, tenant: str, run_id: str, limit: int, offset: int = 0
) -> list[LogLineView]:
    """The run's log lines in order (`NotFound` for no such run; `Unavailable` when the log
    store does not answer)."""
    await require_run(api, tenant, run_id)
    rows = await LogRepo(api.olap).run_logs(tenant, run_id, limit=limit, offset=offset)
    return [_view(r) for r in rows]


async def search(
    api: ApiState, tenant: str, q: str, workflow: str | None, since: datetime | None, limit: int
) -> list[LogLineView]:
    """Log lines of the tenant's tasks containing `q`, newest first (default: the last
    DEFAULT_SEARCH_RANGE)."""
    start = datetime.now(UTC) - DEFAULT_SEARCH_RANGE if since is None else since
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    rows = await LogRepo(api.olap).search(tenant, q, workflow=workflow, since=start, limit=limit)
    return [_view(r) for r in rows]
