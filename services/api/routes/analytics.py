"""Analytics over the OLAP projection: run counts, task latency percentiles, throughput.

The queries live in `services.api.repos.analytics`; `services.api.actions.analytics` bounds
the time range and shapes the answers.
"""

from __future__ import annotations

from litestar import Controller, get

from libs.common.tokens import Scope
from services.api.actions import analytics
from services.api.actions.analytics import parse_instant
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.analytics import Instant, RunCounts, TaskLatencyReport, Throughput


class AnalyticsController(Controller):
    """Query parameters `since` / `until` (ISO 8601) bound every endpoint; default: last hour."""

    path = "/analytics"
    tags = ["analytics"]
    guards = [requires(Scope.READ)]

    @get("/runs", operation_id="getRunCounts", responses=errors(503))
    async def run_counts(
        self, api: Api, tenant: Tenant,
        since: Instant = None, until: Instant = None,
    ) -> RunCounts:
        """Runs created in the range, counted by workflow and current status."""
        return await analytics.run_counts(
            api, tenant, parse_instant("since", since), parse_instant("until", until))

    @get("/tasks", operation_id="getTaskLatency", responses=errors(503))
    async def task_latency(
        self, api: Api, tenant: Tenant,
        since: Instant = None, until: Instant = None,
    ) -> TaskLatencyReport:
        """Task duration and queue-wait percentiles (p50/p95/p99, ms), overall and per workflow."""
        return await analytics.task_latency(
            api, tenant, parse_instant("since", since), parse_instant("until", until))

    @get("/throughput", operation_id="getThroughput", responses=errors(503))
    async def throughput(
        self, api: Api, tenant: Tenant,
        since: Instant = None, until: Instant = None,
    ) -> Throughput:
        """Finished task attempts per minute, by outcome."""
        return await analytics.throughput(
            api, tenant, parse_instant("since", since), parse_instant("until", until))
