"""The dashboard's writes, and the reads it shows as the REST API does, through the REST
API's own handlers.

Each function calls the function behind a REST endpoint (`handler.fn`) with the session's
principal, so a button in the browser publishes exactly the command, with the same validation,
msg-id and audit entry (naming the token), that the same request to the REST API would; and a
page lists what the REST API lists. The handlers' guards do not run on this path: pages check
the scope first (`session.require_scope`). The handlers stay the one place each change is
written — moving their bodies into shared functions would only add a layer both call. Errors
are the handlers' own HTTP exceptions (their `detail` is shown to the user).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from libs.common.tokens import Principal
from services.api.routes.analytics import (
    AnalyticsController,
    RunCounts,
    TaskLatencyReport,
    Throughput,
)
from services.api.routes.crons import (
    CronController,
    CronIn,
    CronView,
    ScheduledController,
    ScheduledView,
)
from services.api.routes.filters import FilterController, FilterIn, FilterView
from services.api.routes.limits import LimitController, LimitsView
from services.api.routes.rate_limits import RateLimitController, RateLimitView
from services.api.routes.runs import RunController
from services.api.routes.tokens import TokenController, TokenCreated, TokenIn, TokenView
from services.api.routes.workflows import WorkflowController
from services.api.schemas import (
    RollbackRequest,
    RunCreated,
    RunRequest,
    VersionView,
    WorkflowView,
)
from services.api.state import ApiState


async def cancel_run(api: ApiState, caller: Principal, run_id: str) -> None:
    await RunController.cancel.fn(
        None, run_id=run_id, tenant=caller.tenant, api=api, caller=caller
    )


async def replay_run(api: ApiState, caller: Principal, run_id: str) -> None:
    await RunController.replay.fn(
        None, run_id=run_id, tenant=caller.tenant, api=api, caller=caller
    )


async def trigger(
    api: ApiState, caller: Principal, workflow: str, input: Any, metadata: dict[str, str],
    priority: int | None,
) -> RunCreated:
    req = RunRequest(input=input, metadata=metadata, priority=priority)
    created: RunCreated = await WorkflowController.trigger.fn(
        None, name=workflow, data=req, tenant=caller.tenant, api=api, caller=caller,
        traceparent=None,
    )
    return created


async def rollback(api: ApiState, caller: Principal, workflow: str, version_id: str) -> VersionView:
    view: VersionView = await WorkflowController.rollback.fn(
        None, name=workflow, data=RollbackRequest(version_id=version_id), tenant=caller.tenant,
        api=api, caller=caller,
    )
    return view


async def versions(api: ApiState, tenant: str, workflow: str) -> list[VersionView]:
    views: list[VersionView] = await WorkflowController.versions.fn(
        None, name=workflow, tenant=tenant, api=api, limit=1000
    )
    return views


async def workflows(api: ApiState, tenant: str) -> list[WorkflowView]:
    views: list[WorkflowView] = await WorkflowController.list_workflows.fn(
        None, tenant=tenant, api=api
    )
    return views


async def workflow(api: ApiState, tenant: str, name: str) -> WorkflowView:
    view: WorkflowView = await WorkflowController.get_workflow.fn(
        None, name=name, tenant=tenant, api=api
    )
    return view


async def crons(api: ApiState, tenant: str) -> list[CronView]:
    views: list[CronView] = await CronController.list_crons.fn(
        None, tenant=tenant, api=api, workflow=None, limit=1000
    )
    return views


async def cron(api: ApiState, tenant: str, cron_id: str) -> CronView:
    view: CronView = await CronController.get_cron.fn(None, cron_id=cron_id, tenant=tenant, api=api)
    return view


async def create_cron(api: ApiState, caller: Principal, data: CronIn) -> CronView:
    view: CronView = await CronController.create.fn(
        None, data=data, tenant=caller.tenant, api=api, caller=caller
    )
    return view


async def delete_cron(api: ApiState, caller: Principal, cron_id: str) -> None:
    await CronController.delete_cron.fn(
        None, cron_id=cron_id, tenant=caller.tenant, api=api, caller=caller
    )


async def scheduled(api: ApiState, tenant: str) -> list[ScheduledView]:
    views: list[ScheduledView] = await ScheduledController.list_scheduled.fn(
        None, tenant=tenant, api=api, workflow=None, limit=1000
    )
    return views


async def delete_scheduled(api: ApiState, tenant: str, scheduled_id: str) -> None:
    await ScheduledController.delete_scheduled.fn(
        None, scheduled_id=scheduled_id, tenant=tenant, api=api
    )


async def filters(api: ApiState, tenant: str) -> list[FilterView]:
    views: list[FilterView] = await FilterController.list_filters.fn(
        None, tenant=tenant, api=api, workflow=None, limit=1000
    )
    return views


async def create_filter(api: ApiState, caller: Principal, data: FilterIn) -> FilterView:
    view: FilterView = await FilterController.create.fn(
        None, data=data, tenant=caller.tenant, api=api, caller=caller
    )
    return view


async def delete_filter(api: ApiState, caller: Principal, filter_id: str) -> None:
    await FilterController.delete_filter.fn(
        None, filter_id=filter_id, tenant=caller.tenant, api=api, caller=caller
    )


async def rate_limits(api: ApiState, tenant: str) -> list[RateLimitView]:
    views: list[RateLimitView] = await RateLimitController.list_limits.fn(
        None, tenant=tenant, api=api
    )
    return views


async def analytics(
    api: ApiState, tenant: str, since: datetime | None, until: datetime | None
) -> tuple[RunCounts, TaskLatencyReport, Throughput]:
    a = AnalyticsController
    counts: RunCounts = await a.run_counts.fn(None, api=api, tenant=tenant, since=since, until=until)
    latency: TaskLatencyReport = await a.task_latency.fn(
        None, api=api, tenant=tenant, since=since, until=until
    )
    through: Throughput = await a.throughput.fn(
        None, api=api, tenant=tenant, since=since, until=until
    )
    return counts, latency, through


async def limits(api: ApiState, tenant: str) -> LimitsView:
    view: LimitsView = await LimitController.get_limits.fn(None, tenant=tenant, api=api)
    return view


async def tokens(api: ApiState, tenant: str) -> list[TokenView]:
    views: list[TokenView] = await TokenController.list_tokens.fn(
        None, tenant=tenant, api=api, include_revoked=True
    )
    return views


async def create_token(api: ApiState, caller: Principal, data: TokenIn) -> TokenCreated:
    created: TokenCreated = await TokenController.create.fn(None, data=data, api=api,
                                                            caller=caller)
    return created


async def revoke_token(api: ApiState, caller: Principal, token_id: str) -> None:
    await TokenController.revoke.fn(None, token_id=token_id, api=api, caller=caller)
