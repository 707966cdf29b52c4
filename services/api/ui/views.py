"""What a page shows, computed from what the REST API returns.

A run page starts from `load_run` (the same RunView GET /runs/{id} returns) and the run's
history (GET /runs/{id}/events); this module only arranges them for display: the DAG, the
per-task timeline, and each task's attempts with their errors and tracebacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from libs.common.specs import WorkflowSpec
from libs.common.statuses import RUN_TERMINAL
from services.api.actions import logs as log_actions
from services.api.actions.runs import history, load_run
from services.api.repos import NotFound, RepoError
from services.api.routes.interaction import waitpoint_view
from services.api.schemas import RunEventView, RunView, TaskView
from services.api.schemas.interaction import WaitpointView
from services.api.schemas.logs import LogLineView
from services.api.state import ApiState
from services.api.ui.live import wait_for_run
from services.api.ui.svg import STATUS_CLASS, DagNode, dag_svg

# Log lines a run page shows (the first ones: a run's log reads in order); the REST API pages on.
LOG_LINES = 2000
TERMINAL_TASK = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT", "SKIPPED"})


@dataclass(frozen=True)
class TimelineBar:
    """One task on the run's time axis, as percentages of the run's span."""

    task: str
    status: str
    wait_left: float  # queued -> started
    wait_width: float
    run_left: float  # started -> finished (or now)
    run_width: float
    title: str


@dataclass(frozen=True)
class RunPage:
    run: RunView
    dag: str
    timeline: list[TimelineBar]
    history: list[RunEventView]
    span_s: float
    finished: bool
    logs: list[LogLineView]
    logs_error: str | None  # the log store did not answer
    # docs/interaction.md: the latest ctx.set_state value (and when), the run's waitpoints
    state: Any = None
    state_at: datetime | None = None
    waitpoints: list[WaitpointView] = field(default_factory=list)

    @property
    def logs_cut(self) -> bool:
        """More lines than a page shows."""
        return len(self.logs) >= LOG_LINES


def status_class(status: str) -> str:
    return STATUS_CLASS.get(status, "s-none")


def _dag(run: RunView, spec: WorkflowSpec | None) -> str:
    by_name = {t.name: t for t in run.tasks}
    nodes: list[DagNode] = []
    if spec is not None:
        for t in spec.tasks:
            row = by_name.get(t.name)
            nodes.append(DagNode(t.name, tuple(t.parents), row.status if row else "",
                                 f"#task-{row.id}" if row else ""))
        deepest = tuple(t.name for t in spec.tasks)
        for hook, note in ((spec.on_failure, "on failure"), (spec.on_success, "on success")):
            if hook is not None:
                row = by_name.get(hook.name)
                # Drawn after every task: it runs when the rest has finished.
                nodes.append(DagNode(hook.name, deepest, row.status if row else "",
                                     f"#task-{row.id}" if row else "", note))
    else:  # definition gone: still show the tasks, unconnected
        nodes = [DagNode(t.name, (), t.status, f"#task-{t.id}") for t in run.tasks]
    return dag_svg(nodes)


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _timeline(run: RunView) -> tuple[list[TimelineBar], float]:
    start = datetime.fromisoformat(run.created_at)
    end = _ts(run.finished_at) or datetime.now(UTC)
    stamps = [
        ts for t in run.tasks
        for ts in (_ts(t.queued_at), _ts(t.started_at), _ts(t.finished_at)) if ts is not None
    ]
    end = max([end, *stamps])
    span = max((end - start).total_seconds(), 0.001)

    def pct(moment: datetime) -> float:
        return round(max(0.0, min(100.0, (moment - start).total_seconds() / span * 100)), 2)

    bars = []
    for t in run.tasks:
        queued, started = _ts(t.queued_at), _ts(t.started_at)
        finished = _ts(t.finished_at) or (end if t.status not in TERMINAL_TASK else None)
        wait_l = pct(queued) if queued else 0.0
        wait_r = pct(started) if started else (pct(finished) if finished and queued else wait_l)
        run_l = pct(started) if started else wait_r
        run_r = pct(finished) if finished and started else run_l
        bars.append(TimelineBar(
            task=t.name, status=t.status, wait_left=wait_l, wait_width=max(wait_r - wait_l, 0),
            run_left=run_l, run_width=max(run_r - run_l, 0.4 if started else 0),
            title=_bar_title(t),
        ))
    return bars, span


def _bar_title(t: TaskView) -> str:
    return (f"{t.name}: queued {t.queued_at or '—'}, started {t.started_at or '—'},"
            f" finished {t.finished_at or '—'}")


async def run_page(
    api: ApiState, tenant: str, run_id: str, wait_s: float = 0.0
) -> RunPage:
    """The run's page; with `wait_s`, a run triggered a moment ago gets that long to appear."""
    run = await load_run(api, tenant, run_id)
    if run is None and wait_s > 0:

        async def exists() -> bool:
            return await api.runs.status(tenant, run_id) is not None

        if await wait_for_run(api, tenant, run_id, exists, wait_s):
            run = await load_run(api, tenant, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    spec: WorkflowSpec | None = None
    try:  # the definition the run was started from (versions are immutable)
        spec = (await api.workflows.version(tenant, run.workflow, run.version_id)).spec
    except NotFound:
        pass
    if spec is not None:  # tasks in definition order (parents first), hooks last
        order = {t.name: i for i, t in enumerate(
            [*spec.tasks, *(h for h in (spec.on_failure, spec.on_success) if h is not None)]
        )}
        run = msgspec.structs.replace(
            run, tasks=sorted(run.tasks, key=lambda t: order.get(t.name, len(order)))
        )
    events = await history(api, tenant, run_id)
    logs, logs_error = await run_logs(api, tenant, run_id)
    bars, span = _timeline(run)
    state = await api.interaction.state(tenant, run_id)
    waitpoints = [waitpoint_view(w) for w in await api.interaction.waitpoints(tenant, run_id=run_id)]
    return RunPage(run=run, dag=_dag(run, spec), timeline=bars, history=events, span_s=span,
                   finished=run.status in RUN_TERMINAL, logs=logs, logs_error=logs_error,
                   state=msgspec.json.decode(state["state"]) if state else None,
                   state_at=state["updated_at"] if state else None, waitpoints=waitpoints)


async def run_logs(api: ApiState, tenant: str, run_id: str) -> tuple[list[LogLineView], str | None]:
    """The run's log lines as GET /runs/{id}/logs returns them, or why there are none."""
    try:
        lines = await log_actions.run_logs(api, tenant, run_id, LOG_LINES)
    except RepoError as exc:
        return [], str(exc)
    return lines, None
