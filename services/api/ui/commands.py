"""The dashboard's writes, and the reads it shows as the REST API does, through the actions
the REST routes call (services/api/actions/).

A button in the browser runs the same action, with the same validation, msg-id and audit entry
(naming the session's token), that the same request to the REST API would; and a page lists
the same views the REST API returns. Pages check the scope first (`session.require_scope`), as
the routes' guards do. Refusals are the actions' domain errors (`RepoError`, `LimitExceeded`,
`PayloadTooLarge`, the 422 `InputInvalid`); the dashboard shows their message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from libs.common.tokens import Principal
from services.api.actions import admission
from services.api.actions import analytics as analytics_actions
from services.api.actions import crons as cron_actions
from services.api.actions import filters as filter_actions
from services.api.actions import flow as flow_actions
from services.api.actions import rate_limits as rate_limit_actions
from services.api.actions import tokens as token_actions
from services.api.actions import trigger as trigger_actions
from services.api.actions import workflows as workflow_actions
from services.api.actions.cancel import cancel_run
from services.api.actions.replay import replay_run
from services.api.repos.errors import NotFound
from services.api.schemas import RunCreated, RunRequest, VersionView, WorkflowView
from services.api.schemas.analytics import RunCounts, TaskLatencyReport, Throughput
from services.api.schemas.crons import CronIn, CronView, ScheduledView
from services.api.schemas.filters import FilterIn, FilterView
from services.api.schemas.flow import PauseView, RunFlowView
from services.api.schemas.limits import LimitsView, RateLimitView
from services.api.schemas.tokens import TokenCreated, TokenIn, TokenView
from services.api.state import ApiState

__all__ = ["cancel_run", "replay_run"]  # re-exported: the runs pages call them as commands.*


async def trigger(
    api: ApiState, caller: Principal, workflow: str, input: Any, metadata: dict[str, str],
    priority: int | None,
) -> RunCreated:
    req = RunRequest(input=input, metadata=metadata, priority=priority)
    return await trigger_actions.trigger_run(api, caller, workflow, req)


async def rollback(api: ApiState, caller: Principal, workflow: str, version_id: str) -> VersionView:
    return await workflow_actions.rollback(api, caller, workflow, version_id)


async def versions(api: ApiState, tenant: str, workflow: str) -> list[VersionView]:
    return await workflow_actions.versions(api, tenant, workflow, limit=1000)


async def workflows(api: ApiState, tenant: str) -> list[WorkflowView]:
    return await workflow_actions.list_workflows(api, tenant)


async def workflow(api: ApiState, tenant: str, name: str) -> WorkflowView:
    return await workflow_actions.get_workflow(api, tenant, name)


async def pause(api: ApiState, caller: Principal, workflow: str, mode: str) -> PauseView:
    return await flow_actions.pause(api, caller, workflow, mode)


async def resume(api: ApiState, caller: Principal, workflow: str) -> PauseView:
    return await flow_actions.resume(api, caller, workflow)


async def pause_state(api: ApiState, tenant: str, workflow: str) -> PauseView:
    return await flow_actions.pause_state(api, tenant, workflow)


async def paused_workflows(api: ApiState, tenant: str) -> dict[str, str]:
    """Workflow name -> pause mode, of the tenant's paused workflows."""
    return {name: p.mode for name, p in (await api.flow.pauses(tenant)).items()}


async def run_flow(api: ApiState, tenant: str, run_id: str) -> RunFlowView | None:
    """The window, batch or pause that held the run, if one did."""
    try:
        return await flow_actions.run_flow(api, tenant, run_id)
    except NotFound:
        return None


async def crons(api: ApiState, tenant: str) -> list[CronView]:
    return await cron_actions.list_crons(api, tenant)


async def cron(api: ApiState, tenant: str, cron_id: str) -> CronView:
    return await cron_actions.get_cron(api, tenant, cron_id)


async def create_cron(api: ApiState, caller: Principal, data: CronIn) -> CronView:
    return await cron_actions.create_cron(api, caller, data)


async def delete_cron(api: ApiState, caller: Principal, cron_id: str) -> None:
    await cron_actions.delete_cron(api, caller, cron_id)


async def scheduled(api: ApiState, tenant: str) -> list[ScheduledView]:
    return await cron_actions.list_scheduled(api, tenant)


async def delete_scheduled(api: ApiState, tenant: str, scheduled_id: str) -> None:
    await cron_actions.delete_scheduled(api, tenant, scheduled_id)


async def filters(api: ApiState, tenant: str) -> list[FilterView]:
    return await filter_actions.list_filters(api, tenant)


async def create_filter(api: ApiState, caller: Principal, data: FilterIn) -> FilterView:
    return await filter_actions.create_filter(api, caller, data)


async def delete_filter(api: ApiState, caller: Principal, filter_id: str) -> None:
    await filter_actions.delete_filter(api, caller, filter_id)


async def rate_limits(api: ApiState, tenant: str) -> list[RateLimitView]:
    return await rate_limit_actions.list_rate_limits(api, tenant)


async def analytics(
    api: ApiState, tenant: str, since: datetime | None, until: datetime | None
) -> tuple[RunCounts, TaskLatencyReport, Throughput]:
    return (
        await analytics_actions.run_counts(api, tenant, since, until),
        await analytics_actions.task_latency(api, tenant, since, until),
        await analytics_actions.throughput(api, tenant, since, until),
    )


async def limits(api: ApiState, tenant: str) -> LimitsView:
    return await admission.usage(api, tenant)


async def tokens(api: ApiState, tenant: str) -> list[TokenView]:
    return await token_actions.list_tokens(api, tenant, include_revoked=True)


async def create_token(api: ApiState, caller: Principal, data: TokenIn) -> TokenCreated:
    return await token_actions.create_token(api, caller, data)


async def revoke_token(api: ApiState, caller: Principal, token_id: str) -> None:
    await token_actions.revoke_token(api, caller, token_id)
