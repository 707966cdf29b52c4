"""Talking to a run (docs/interaction.md): signals, state, waitpoints, fork.

`RunInteractionController` adds to /runs/{id}; `WaitpointController` lists and completes
waitpoints with a token. The signed URL itself (no token) is a page: services/api/ui.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Body, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from libs.common.tokens import Scope
from services.api.actions import fork, signals, waitpoints
from services.api.auth import Api, Caller, Tenant, requires
from services.api.repos.errors import (
    NotFound,
)
from services.api.repos.interaction import Waitpoint
from services.api.schemas import errors
from services.api.schemas.interaction import (
    ForkAccepted,
    ForkRequest,
    RunStateView,
    SignalAccepted,
    SignalsView,
    SignalView,
    WaitpointCreate,
    WaitpointView,
)

SIGNALS_LISTED = 200


def waitpoint_view(wp: Waitpoint, url: str | None = None) -> WaitpointView:
    expired = wp.status == "pending" and wp.expires_at <= datetime.now(UTC)
    return WaitpointView(
        id=wp.id, run_id=wp.run_id, task_id=wp.task_id, position=wp.position, label=wp.label,
        status="expired" if expired else wp.status, created_at=wp.created_at.isoformat(),
        expires_at=wp.expires_at.isoformat(),
        completed_at=wp.completed_at.isoformat() if wp.completed_at else None,
        payload=msgspec.json.decode(wp.payload) if wp.payload is not None else None, url=url,
    )


def _base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


class RunInteractionController(Controller):
    path = "/runs"
    tags = ["runs"]
    guards = [requires(Scope.READ)]

    @post("/{run_id:str}/signals/{name:str}", status_code=HTTP_202_ACCEPTED,
          guards=[requires(Scope.WRITE)], operation_id="signalRun",
          responses=errors(400, 404, 409, 413, 429))
    async def signal(
        self, run_id: str, caller: Caller, api: Api,
        name: Annotated[str, Parameter(pattern=signals.SIGNAL_NAME.pattern, min_length=1,
                                       max_length=128)],
        data: Any = Body(default=None, description="the signal's payload: any JSON (null when empty)"),
    ) -> SignalAccepted:
        """Send signal `name` to a run. A durable task waiting for it resumes with the payload;
        one sent before the wait is kept and delivered at the wait, in send order, once. A
        finished run answers 409 naming its status; a run with 1,000 signals waiting, 429."""
        signal_id = await signals.send_signal(api, caller, run_id, name, data)
        return SignalAccepted(run_id=run_id, signal_id=signal_id, name=name)

    @get("/{run_id:str}/signals", operation_id="listRunSignals", responses=errors(404))
    async def list_signals(self, run_id: str, tenant: Tenant, api: Api) -> SignalsView:
        """What was sent to the run (the latest 200), and how many no wait has taken yet."""
        if await api.runs.status(tenant, run_id) is None:
            raise NotFound(f"run {run_id!r} not found")
        rows = await api.interaction.inbox(tenant, run_id, SIGNALS_LISTED)
        return SignalsView(
            waiting=await api.interaction.waiting_signals(tenant, run_id),
            signals=[SignalView(
                id=r["id"], seq=r["seq"], kind=r["kind"], name=r["name"], status=r["status"],
                sent_at=r["sent_at"].isoformat(), task_id=r["task_id"], position=r["position"],
                delivered_at=r["delivered_at"].isoformat() if r["delivered_at"] else None,
            ) for r in rows],
        )

    @get("/{run_id:str}/state", operation_id="getRunState", responses=errors(404))
    async def state(self, run_id: str, tenant: Tenant, api: Api) -> RunStateView:
        """The latest value the run's durable tasks passed to `ctx.set_state` (null: none)."""
        value, updated_at = await signals.run_state(api, tenant, run_id)
        return RunStateView(run_id=run_id, state=value, updated_at=updated_at)

    @post("/{run_id:str}/waitpoints", status_code=HTTP_200_OK,
          guards=[requires(Scope.WRITE, Scope.WORKER)], operation_id="createWaitpoint",
          responses=errors(400, 404))
    async def create_waitpoint(
        self, run_id: str, data: WaitpointCreate, tenant: Tenant, api: Api,
        request: Request[Any, Any, Any],
    ) -> WaitpointView:
        """Made by a durable task (`ctx.aio_create_waitpoint`): the waitpoint of its log
        position, with its signed URL. Asking again for the same position returns the same."""
        wp = await waitpoints.create(api, tenant, run_id, data.task_id, data.position,
                                     data.timeout_s, data.label)
        return waitpoint_view(wp, await waitpoints.signed_url(api, wp, _base_url(request)))

    @get("/{run_id:str}/waitpoints", operation_id="listRunWaitpoints", responses=errors(404))
    async def run_waitpoints(self, run_id: str, tenant: Tenant, api: Api) -> list[WaitpointView]:
        """The run's waitpoints, newest first."""
        if await api.runs.status(tenant, run_id) is None:
            raise NotFound(f"run {run_id!r} not found")
        return [waitpoint_view(w) for w in await api.interaction.waitpoints(tenant, run_id=run_id)]


    @post("/{run_id:str}/fork", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="forkRun", responses=errors(400, 404, 413, 429))
    async def fork(self, run_id: str, data: ForkRequest, caller: Caller, api: Api) -> ForkAccepted:
        """A new run from this one: `from_task` and everything that depends on it run again,
        every other task's recorded output is reused (on the workflow's current version
        unless `version_id` pins one; `input` replaces the run input when given). The new
        run's `forked_from` names this one."""
        return await fork.fork_run(api, caller, run_id, data)


class WaitpointController(Controller):
    path = "/waitpoints"
    tags = ["waitpoints"]
    guards = [requires(Scope.READ)]

    @get("/", operation_id="listWaitpoints")
    async def list_waitpoints(
        self, tenant: Tenant, api: Api,
        pending: bool = Parameter(default=False, description="only those still open"),
        run_id: str | None = None,
    ) -> list[WaitpointView]:
        """The tenant's waitpoints, newest first (at most 200)."""
        found = await api.interaction.waitpoints(tenant, run_id=run_id, pending_only=pending)
        return [waitpoint_view(w) for w in found]

    @get("/{waitpoint_id:str}", operation_id="getWaitpoint", responses=errors(404))
    async def get_waitpoint(self, waitpoint_id: str, tenant: Tenant, api: Api) -> WaitpointView:
        """One waitpoint of the caller's tenant (its URL is only given to the task)."""
        wp = await api.interaction.waitpoint(waitpoint_id, tenant)
        if wp is None:
            raise NotFound(f"waitpoint {waitpoint_id!r} not found")
        return waitpoint_view(wp)

    @post("/{waitpoint_id:str}/complete", status_code=HTTP_200_OK, guards=[requires(Scope.WRITE)],
          operation_id="completeWaitpoint", responses=errors(404, 409, 410, 413))
    async def complete(
        self, waitpoint_id: str, caller: Caller, api: Api,
        data: Any = Body(default=None, description="handed to the waiting task: any JSON"),
    ) -> WaitpointView:
        """Complete a waitpoint of the caller's tenant (once: a second time is 409)."""
        wp = await waitpoints.complete(api, waitpoint_id, data, by=f"token:{caller.token_id}",
                                       tenant=caller.tenant)
        return waitpoint_view(wp)
