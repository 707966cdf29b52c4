"""The scheduler's metrics and trace spans, derived from what a batch already recorded.

Nothing here runs per message on the way in: after a batch commits, one pass over the
transitions it recorded (`Effects.bundled`) counts them and observes latencies, and spans are recorded only for runs that
carry a sampled trace context. Gauges describing current state are computed at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Histogram

from libs.common import metrics, telemetry
from libs.common.messages import TaskStateChanged, TriggerRun
from services.scheduler.effects import Effects
from services.scheduler.engine import Engine
from services.scheduler.model import TERMINAL, Run, TaskStatus

SCOPE = "ratchet.scheduler"
_RUNNING = TaskStatus.RUNNING.value
_TERMINAL = frozenset(s.value for s in TERMINAL)


def trace_triggers(engine: Engine, triggers: Iterable[TriggerRun], existing: set[str]) -> None:
    """Record the scheduler's span for each new run and make it the run's trace context.

    A trigger without a context (cron, events) starts a new trace here. Mutates the commands
    in place before the engine reads them, so the run, its row and its assignments carry it.
    """
    if not telemetry.enabled():
        return
    for trig in triggers:
        if trig.run_id in engine.runs or trig.run_id in existing:
            continue  # a redelivered trigger: its run exists already
        trig.traceparent = telemetry.record_span(
            SCOPE,
            "run.create",
            trig.traceparent,
            {"ratchet.workflow": trig.workflow, "ratchet.run_id": trig.run_id,
             "ratchet.source": trig.source},
        )


def after_batch(engine: Engine, fx: Effects) -> None:
    """Count the committed batch's transitions, observe latencies, and trace traced runs."""
    metrics.SCHEDULER_BATCHES.inc()
    counts: dict[str, int] = {}
    tracing = telemetry.enabled()
    for items in fx.bundled:
        for change, _key in items:
            if not isinstance(change, TaskStateChanged):
                continue
            state = change.state
            counts[state] = counts.get(state, 0) + 1
            if state == _RUNNING:
                if change.started_ms and change.queued_ms:
                    metrics.TRIGGER_TO_START.observe(
                        max(0, change.started_ms - change.queued_ms) / 1000
                    )
                continue
            if state not in _TERMINAL:
                continue
            if change.started_ms:
                _task_duration(state).observe(max(0, change.ts_ms - change.started_ms) / 1000)
            if tracing:
                run = engine.runs.get(change.run_id) or fx.runs.get(change.run_id)
                if run is not None and run.traceparent:
                    _trace_task(run.traceparent, change)
    for state, n in counts.items():
        metrics.TASK_TRANSITIONS.labels(state).inc(n)
    for run in fx.finished_runs:
        if run.finished_ms is None:
            continue
        status = run.status.value
        _run_duration(status).observe(max(0, run.finished_ms - run.created_ms) / 1000)
        if tracing and run.traceparent:
            telemetry.record_span(
                SCOPE, "run.finish", run.traceparent, _run_attrs(run) | {"ratchet.status": status},
                start_ms=run.created_ms, end_ms=run.finished_ms,
                error=status if status != "SUCCEEDED" else None,
            )


# Labelled children resolved once: `.labels()` costs more than the observation itself.
_TASK_DURATIONS: dict[str, Histogram] = {}
_RUN_DURATIONS: dict[str, Histogram] = {}


def _task_duration(status: str) -> Histogram:
    child = _TASK_DURATIONS.get(status)
    if child is None:
        child = _TASK_DURATIONS[status] = metrics.TASK_DURATION.labels(status)
    return child


def _run_duration(status: str) -> Histogram:
    child = _RUN_DURATIONS.get(status)
    if child is None:
        child = _RUN_DURATIONS[status] = metrics.RUN_DURATION.labels(status)
    return child


def _trace_task(traceparent: str, change: TaskStateChanged) -> None:
    """One span per settled task: from queued to its outcome, its start marked as an event."""
    attrs: dict[str, str | int] = {
        "ratchet.tenant": change.tenant,
        "ratchet.workflow": change.workflow,
        "ratchet.run_id": change.run_id,
        "ratchet.task_id": change.task_id,
        "ratchet.task_name": change.task_name,
        "ratchet.attempt": change.attempt,
        "ratchet.worker_id": change.worker_id,
        "ratchet.status": change.state,
    }
    error = change.error.message if change.error is not None else None
    telemetry.record_span(
        SCOPE, "task", traceparent, attrs,
        start_ms=change.queued_ms or change.ts_ms, end_ms=change.ts_ms, error=error,
        events=[("started", change.started_ms)] if change.started_ms else (),
    )


def _run_attrs(run: Run) -> dict[str, str | int]:
    return {"ratchet.tenant": run.tenant, "ratchet.workflow": run.workflow,
            "ratchet.run_id": run.id}


def refresh_gauges(engine: Engine) -> None:
    """State gauges, computed from the in-memory model when /metrics is scraped."""
    by_state = dict.fromkeys(TaskStatus, 0)
    ready = 0
    for task in engine.tasks.values():
        by_state[task.status] += 1
        if task.status == TaskStatus.QUEUED and task.not_before_ms is None:
            ready += 1
    for status, n in by_state.items():
        metrics.TASKS.labels(status.value).set(n)
    metrics.QUEUE_DEPTH.set(ready)
    metrics.ACTIVE_RUNS.set(len(engine.runs))
    workers = list(engine.assigner.workers.values())
    metrics.WORKERS.set(len(workers))
    metrics.WORKER_SLOTS.labels("capacity").set(sum(w.info.slots for w in workers))
    metrics.WORKER_SLOTS.labels("in_use").set(sum(len(w.inflight) for w in workers))
