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
from litestar.status_codes import HTTP_202_ACCEPTED

from libs.common import jetstream, subjects
from libs.common.db import HISTORY_DECODER
from libs.common.jetstream import Outgoing
from libs.common.messages import CancelRun, ReplayRun, encode
from libs.common.statuses import RUN_TERMINAL, RunStatus
from services.api.auth import Api, Tenant
from services.api.schemas import (
    Accepted,
    AttemptView,
    RunEventView,
    RunSummary,
    RunView,
    TaskView,
    errors,
)
from services.api.state import ApiState

MAX_WAIT_S = 60.0
RUN_STATUSES = frozenset(s.value for s in RunStatus)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    return msgspec.json.decode(raw)


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
        out = _json(bytes(t["output"])) if t["output"] is not None else None
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
    return RunView(
        id=run["id"], workflow=run["workflow"], version_id=run["version_id"],
        status=run["status"], priority=run["priority"], input=_json(bytes(run["input"])),
        metadata=msgspec.json.decode(run["metadata"]), created_at=run["created_at"].isoformat(),
        finished_at=_iso(run["finished_at"]), output=output, tasks=views, errors=errors,
    )


class RunController(Controller):
    path = "/runs"
    tags = ["runs"]

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
    ) -> list[RunSummary]:
        """Runs, newest first, optionally of one status and one workflow."""
        rows = await api.runs.list_runs(tenant, status, workflow, limit)
        return [
            RunSummary(
                id=r["id"], workflow=r["workflow"], status=r["status"],
                created_at=r["created_at"].isoformat(), finished_at=_iso(r["finished_at"]),
            )
            for r in rows
        ]

    @post("/{run_id:str}/cancel", status_code=HTTP_202_ACCEPTED, operation_id="cancelRun",
          responses=errors(404))
    async def cancel(self, run_id: str, tenant: Tenant, api: Api) -> Accepted:
        """Cancel the run's unfinished tasks (asynchronously; a finished run stays as it is)."""
        await _require_run(api, tenant, run_id)
        msg = CancelRun(run_id=run_id)
        await jetstream.publish_one(
            api.js, Outgoing(subjects.cmd(tenant, "run.cancel"), encode(msg), f"cancel:{run_id}")
        )
        return Accepted(run_id=run_id)

    @post("/{run_id:str}/replay", status_code=HTTP_202_ACCEPTED, operation_id="replayRun",
          responses=errors(400, 404))
    async def replay(self, run_id: str, tenant: Tenant, api: Api) -> Accepted:
        """Run a finished run's failed and cancelled tasks again (400 while it is unfinished)."""
        status = await _require_run(api, tenant, run_id)
        if status not in RUN_TERMINAL:
            raise ClientException(f"run {run_id!r} is {status}; only finished runs replay")
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


async def _require_run(api: ApiState, tenant: str, run_id: str) -> str:
    status = await api.runs.status(tenant, run_id)
    if status is None:
        raise NotFoundException(f"run {run_id!r} not found")
    return status
