"""Reading runs: the view of one run (GET /runs/{id} and the run page), its history, and the
outcome of many (POST /runs/results). Cancel and replay are their own modules."""

from __future__ import annotations

from typing import Any

import msgspec

from libs.common.db import HISTORY_DECODER
from libs.common.statuses import RUN_TERMINAL
from services.api.actions.offload import resolve
from services.api.repos.errors import NotFound
from services.api.schemas import (
    AttemptView,
    ChildView,
    RunEventView,
    RunResult,
    RunSummary,
    RunView,
    TaskView,
)
from services.api.state import ApiState

CHILDREN_SHOWN = 100  # children listed in a run view; GET /runs?parent_run_id= has the rest


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def require_run(api: ApiState, tenant: str, run_id: str) -> str:
    """The run's status; `NotFound` when the tenant has no such run."""
    status = await api.runs.status(tenant, run_id)
    if status is None:
        raise NotFound(f"run {run_id!r} not found")
    return status


async def load_run(api: ApiState, tenant: str, run_id: str) -> RunView | None:
    """The run with its tasks, outputs and every attempt's error; None when it does not exist."""
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
        out = await resolve(api.store, tenant,
                            bytes(t["output"]) if t["output"] is not None else None)
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
    forked = await api.interaction.fork_links(tenant, run_id)
    return RunView(
        id=run["id"], workflow=run["workflow"], version_id=run["version_id"],
        status=run["status"], priority=run["priority"],
        input=await resolve(api.store, tenant, bytes(run["input"])),
        metadata=msgspec.json.decode(run["metadata"]), created_at=run["created_at"].isoformat(),
        finished_at=_iso(run["finished_at"]), output=output, tasks=views, errors=errors,
        parent_run_id=run["parent_run_id"], parent_task=run["parent_task"], depth=run["depth"],
        children=[
            ChildView(id=k["id"], workflow=k["workflow"], status=k["status"],
                      parent_task=k["parent_task"], created_at=k["created_at"].isoformat())
            for k in kids
        ],
        children_count=kids_count,
        forked_from=forked.forked_from, from_task=forked.from_task,
        from_step=forked.from_step, forks=forked.forks,
    )


async def list_runs(
    api: ApiState, tenant: str, status: str | None, workflow: str | None, limit: int,
    parent_run_id: str | None,
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


async def history(api: ApiState, tenant: str, run_id: str) -> list[RunEventView]:
    """Every transition of the run and its tasks, in order; `NotFound` for no such run."""
    await require_run(api, tenant, run_id)
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


async def results(api: ApiState, tenant: str, run_ids: list[str]) -> list[RunResult]:
    """The outcome of those of `run_ids` that have ended."""
    runs, tasks = await api.runs.results(tenant, run_ids, sorted(RUN_TERMINAL))
    out = {r["id"]: RunResult(id=r["id"], status=r["status"], output={}) for r in runs}
    for t in tasks:
        res = out[t["run_id"]]
        if t["status"] == "SUCCEEDED":
            # Children's results, as their parents read them: references resolved here too.
            res.output[t["name"]] = await resolve(
                api.store, tenant, bytes(t["output"]) if t["output"] is not None else None)
        elif t["status"] in ("FAILED", "TIMED_OUT", "CANCELLED") and t["error"]:
            res.errors[t["name"]] = msgspec.json.decode(t["error"])
    return list(out.values())
