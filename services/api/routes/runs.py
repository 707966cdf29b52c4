"""Reading runs (optionally waiting for the end), cancel, replay and history."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from libs.common import jetstream, subjects
from libs.common.db import HISTORY_DECODER
from libs.common.jetstream import Outgoing
from libs.common.messages import CancelRun, ReplayRun, encode
from libs.common.statuses import RUN_TERMINAL, RunStatus
from libs.common.tokens import Scope
from services.api.auth import Api, Caller, Tenant, requires
from services.api.routes.payloads import resolve
from services.api.routes.tokens import audit_entry
from services.api.schemas import (
    MAX_WAIT_S,
    Accepted,
    AttemptView,
    ChildView,
    ResultsRequest,
    ResultsView,
    RunEventView,
    RunResult,
    RunSummary,
    RunView,
    TaskView,
    errors,
)
from services.api.state import ApiState

CHILDREN_SHOWN = 100  # children listed in a run view; GET /runs?parent_run_id= has the rest
RUN_STATUSES = frozenset(s.value for s in RunStatus)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def load_run(api: ApiState, tenant: str, run_id: str) -> RunView | None:
    records = await api.runs.get(tenant, run_id)
    if records is None:
        return None
    run, tasks, attempts = records
    by_task: dict[str, list[AttemptView]] = {}
    for a in attempts:
        by_task.setdefault(a["task_id"], []).append(
            AttemptView(
                attempt=a["attempt"], status=a["status"], worker_id=a["worker_id"],
                error=msgspec.json.decode(a["error"]) if a["error"] else None,
                started_at=_iso(a["started_at"]), finished_at=_iso(a["finished_at"]),
            )
        )
    views: list[TaskView] = []
    output: dict[str, Any] = {}
    errors: dict[str, dict[str, Any]] = {}
    for t in tasks:
        # Outputs above the inline limit are references: read back from the store here, so
        # the API and the dashboard show the value either way.
        out = await resolve(api, tenant, bytes(t["output"]) if t["output"] is not None else None)
        if t["status"] == "SUCCEEDED":
            output[t["name"]] = out
        history = by_task.get(t["id"], [])
        if t["status"] in ("FAILED", "TIMED_OUT", "CANCELLED"):
            last = next((a.error for a in reversed(history) if a.error), None)
            if last:
                errors[t["name"]] = last
        views.append(
            TaskView(
                id=t["id"], name=t["name"], status=t["status"], attempt=t["attempt"],
                output=out, worker_id=t["worker_id"], queued_at=_iso(t["queued_at"]),
                started_at=_iso(t["started_at"]), finished_at=_iso(t["finished_at"]),
                attempts=history,
            )
        )
    kids, kids_count = await api.runs.children(tenant, run_id, CHILDREN_SHOWN)
    return RunView(
        id=run["id"], workflow=run["workflow"], version_id=run["version_id"],
        status=run["status"], priority=run["priority"], input=await resolve(api, tenant, bytes(run["input"])),
        metadata=msgspec.json.decode(run["metadata"]), created_at=run["created_at"].isoformat(),
        finished_at=_iso(run["finished_at"]), output=output, tasks=views, errors=errors,
        parent_run_id=run["parent_run_id"], parent_task=run["parent_task"], depth=run["depth"],
        children=[
            ChildView(id=k["id"], workflow=k["workflow"], status=k["status"],
                      parent_task=k["parent_task"], created_at=k["created_at"].isoformat())
            for k in kids
        ],
        children_count=kids_count,
    )


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
                view = await load_run(api, tenant, run_id)
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
        rows = await api.runs.list_runs(tenant, status, workflow, limit, parent_run_id)
        return [
            RunSummary(
                id=r["id"], workflow=r["workflow"], status=r["status"],
                created_at=r["created_at"].isoformat(), finished_at=_iso(r["finished_at"]),
                parent_run_id=r["parent_run_id"],
            )
            for r in rows
        ]

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
                found = await _results(api, tenant, ids)
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
        await _require_run(api, tenant, run_id)
        await api.audit.record(audit_entry(caller, "run.cancel", run_id))
        msg = CancelRun(run_id=run_id)
        await jetstream.publish_one(
            api.js, Outgoing(subjects.cmd(tenant, "run.cancel"), encode(msg), f"cancel:{run_id}")
        )
        return Accepted(run_id=run_id)

    @post("/{run_id:str}/replay", status_code=HTTP_202_ACCEPTED, guards=[requires(Scope.WRITE)],
          operation_id="replayRun", responses=errors(400, 404))
    async def replay(self, run_id: str, tenant: Tenant, api: Api, caller: Caller) -> Accepted:
        """Run a finished run's failed and cancelled tasks again (400 while it is unfinished)."""
        status = await _require_run(api, tenant, run_id)
        if status not in RUN_TERMINAL:
            raise ClientException(f"run {run_id!r} is {status}; only finished runs replay")
        await api.audit.record(audit_entry(caller, "run.replay", run_id))
        msg = ReplayRun(run_id=run_id)
        await jetstream.publish_one(
            api.js,
            Outgoing(subjects.cmd(tenant, "run.replay"), encode(msg), f"replay:{uuid.uuid4().hex}"),
        )
        return Accepted(run_id=run_id)

    @get("/{run_id:str}/events", operation_id="listRunEvents", responses=errors(404))
    async def events(self, run_id: str, tenant: Tenant, api: Api) -> list[RunEventView]:
        """Every transition of the run and its tasks, in order."""
        await _require_run(api, tenant, run_id)
        rows = await api.runs.history(tenant, run_id)
        # A row holds one scheduler batch's events of the run, oldest first; `seq` numbers the
        # events of the run from 1.
        out: list[RunEventView] = []
        for row in rows:
            ts = row["ts"].isoformat()
            for event in HISTORY_DECODER.decode(row["events"]):
                out.append(RunEventView(
                    seq=len(out) + 1, kind=event.kind, task_name=event.task_name,
                    attempt=event.attempt, detail=event.detail, ts=ts,
                ))
        return out


async def _results(api: ApiState, tenant: str, run_ids: list[str]) -> list[RunResult]:
    runs, tasks = await api.runs.results(tenant, run_ids, sorted(RUN_TERMINAL))
    out = {r["id"]: RunResult(id=r["id"], status=r["status"], output={}) for r in runs}
    for t in tasks:
        res = out[t["run_id"]]
        if t["status"] == "SUCCEEDED":
            # Children's results, as their parents read them: references resolved here too.
            res.output[t["name"]] = await resolve(
                api, tenant, bytes(t["output"]) if t["output"] is not None else None)
        elif t["status"] in ("FAILED", "TIMED_OUT", "CANCELLED") and t["error"]:
            res.errors[t["name"]] = msgspec.json.decode(t["error"])
    return list(out.values())


async def _require_run(api: ApiState, tenant: str, run_id: str) -> str:
    status = await api.runs.status(tenant, run_id)
    if status is None:
        raise NotFoundException(f"run {run_id!r} not found")
    return status
