"""Reading runs (optionally waiting for the end), cancel, replay and history."""

from __future__ import annotations

import asyncio
import contextlib

from litestar import Controller, get, post
from litestar.exceptions import NotFoundException
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from libs.common.statuses import RUN_TERMINAL, RunStatus
from libs.common.tokens import Scope
from services.api.actions import flow, runs
from services.api.actions.cancel import cancel_run
from services.api.actions.replay import replay_run
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import (
    MAX_WAIT_S,
    Accepted,
    ResultsRequest,
    ResultsView,
    RunEventView,
    RunSummary,
    RunView,
    errors,
)
from services.api.schemas.flow import RunFlowView


class RunController(Controller):
    path = "/runs"
    tags = ["runs"]
    guards = [requires(Scope.READ)]

    @get("/{run_id:str}", operation_id="getRun", responses=errors(404))
    async def get_run(
        self,
        run_id: str,
        tenant: Tenant,
        api: Api,
        wait_s: float = Parameter(
            default=0.0, ge=0.0, le=MAX_WAIT_S,
            description="long-poll: wait up to this long for the run to exist and finish",
        ),
    ) -> RunView:
        """A run with its tasks, outputs and every attempt's error. `wait_s` waits for the end."""
        fut = api.waiter(run_id) if wait_s > 0 else None
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while True:
                view = await runs.load_run(api, tenant, run_id)
                remaining = deadline - loop.time()
                if (view is not None and view.status in RUN_TERMINAL) or fut is None or remaining <= 0:
                    break
                # Not there yet (or not finished): wait for the scheduler's announcement, and
                # re-read now and then in case the announcement came before we subscribed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), min(remaining, 1.0))
                if fut.done():
                    api.forget(run_id, fut)
                    fut = api.waiter(run_id)
        finally:
            if fut is not None:
                api.forget(run_id, fut)
        if view is None:
            raise NotFoundException(f"run {run_id!r} not found")
        return view

    @get("/", operation_id="listRuns")
    async def list_runs(
        self,
        tenant: Tenant,
        api: Api,
        status: RunStatus | None = None,
        workflow: str | None = None,
        limit: int = Parameter(default=50, ge=1, le=1000),
        parent_run_id: str | None = Parameter(
            default=None, description="only the child runs of this run"
        ),
    ) -> list[RunSummary]:
        """Runs, newest first, optionally of one status, one workflow and one parent run."""
        return await runs.list_runs(api, tenant, status, workflow, limit, parent_run_id)

    @post("/results", status_code=HTTP_200_OK, guards=[requires(Scope.READ)],
          operation_id="getRunResults")
    async def results(self, data: ResultsRequest, tenant: Tenant, api: Api) -> ResultsView:
        """The outcome of those of up to 1,000 runs that have ended. With `wait_s`, waits until
        at least one has. What an SDK gathering many child runs' results polls, instead of one
        long-poll per run."""
        wait_s = data.wait_s
        ids = list(dict.fromkeys(data.run_ids))
        futs = {rid: api.waiter(rid) for rid in ids} if wait_s > 0 else {}
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while True:
                found = await runs.results(api, tenant, ids)
                remaining = deadline - loop.time()
                if found or not futs or remaining <= 0:
                    return ResultsView(runs=found)
                # As get_run: wait for an announcement, re-reading now and then.
                await asyncio.wait(futs.values(), timeout=min(remaining, 1.0),
                                   return_when=asyncio.FIRST_COMPLETED)
                for rid, fut in list(futs.items()):
                    if fut.done():
                        api.forget(rid, fut)
                        futs[rid] = api.waiter(rid)
        finally:
            for rid, fut in futs.items():
                api.forget(rid, fut)

    @post("/{run_id:str}/cancel", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="cancelRun", responses=errors(404))
    async def cancel(self, run_id: str, tenant: Tenant, api: Api, caller: Caller) -> Accepted:
        """Cancel the run's unfinished tasks (asynchronously; a finished run stays as it is)."""
        await cancel_run(api, caller, run_id)
        return Accepted(run_id=run_id)

    @post("/{run_id:str}/replay", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="replayRun", responses=errors(400, 404))
    async def replay(self, run_id: str, tenant: Tenant, api: Api, caller: Caller) -> Accepted:
        """Run a finished run's failed and cancelled tasks again (400 while it is unfinished)."""
        await replay_run(api, caller, run_id)
        return Accepted(run_id=run_id)

    @get("/{run_id:str}/events", operation_id="listRunEvents", responses=errors(404))
    async def events(self, run_id: str, tenant: Tenant, api: Api) -> list[RunEventView]:
        """Every transition of the run and its tasks, in order."""
        return await runs.history(api, tenant, run_id)

    @get("/{run_id:str}/flow", operation_id="getRunFlow", responses=errors(404))
    async def run_flow(self, run_id: str, tenant: Tenant, api: Api) -> RunFlowView:
        """The debounce window, batch or pause that holds (or held) the run, and the triggers
        it holds in arrival order; 404 for a run that was started at once."""
        return await flow.run_flow(api, tenant, run_id)
