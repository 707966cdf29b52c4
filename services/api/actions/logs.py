"""Task logs: a run's log in order, and substring search over a tenant's logs."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.errors import NotFoundError

from libs.common import subjects
from libs.common.log_messages import LOG_REPLICATOR_DURABLE
from libs.common.statuses import RUN_TERMINAL
from services.api.actions.runs import require_run
from services.api.repos.logs import LogRepo
from services.api.schemas.logs import LogLineView
from services.api.state import ApiState

DEFAULT_SEARCH_RANGE = timedelta(days=7)
# How long a read of a finished run's log waits for the log store to catch up, at most; then
# it answers with what is stored (the replicator is down or far behind).
CATCH_UP_WAIT_S = 10.0
CATCH_UP_POLL_S = 0.05
# A replicator that neither acks nor fetches for this long is taken to be down: stop waiting.
STALL_S = 3.0

log = logging.getLogger(__name__)


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
    status = await require_run(api, tenant, run_id)
    if status in RUN_TERMINAL:
        await caught_up(api, tenant)
    rows = await LogRepo(api.olap).run_logs(tenant, run_id, limit=limit, offset=offset)
    return [_view(r) for r in rows]


async def caught_up(api: ApiState, tenant: str, wait_s: float = CATCH_UP_WAIT_S) -> bool:
    """Wait until the log store holds every line the tenant's tasks published so far.

    A finished run's lines are all in stream LOG before the run is reported ended (the
    dispatcher publishes an attempt's lines before the report that ends it). The replicator
    acks a message only once its rows are inserted, so when its consumer's ack floor reaches
    the last sequence on the tenant's log subject, a query sees every line of the run. False
    when that did not happen within `wait_s`.
    """
    stream = subjects.Stream.LOG.value
    try:
        last = await api.js.get_last_msg(stream, subjects.task_logs(tenant))
    except NotFoundError:
        return True  # the tenant never logged anything
    target = int(last.seq or 0)
    now = time.monotonic()
    deadline, progress_at, floor = now + wait_s, now, -1
    while True:
        try:
            info = await api.js.consumer_info(stream, LOG_REPLICATOR_DURABLE)
        except NotFoundError:
            return False  # no replicator has ever run: nothing to wait for
        acked = int(info.ack_floor.stream_seq or 0)
        if acked >= target:
            return True
        now = time.monotonic()
        if acked != floor or int(info.delivered.stream_seq or 0) >= target:
            floor, progress_at = acked, now  # moving, or the lines are being inserted
        if now >= deadline or now - progress_at >= STALL_S:
            log.warning("log store behind: stream LOG seq %d not replicated (acked %d)",
                        target, acked)
            return False
        await asyncio.sleep(CATCH_UP_POLL_S)


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
