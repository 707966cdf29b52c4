"""Trace spans and log ids for the tasks a worker runs.

Every task runs in an asyncio task whose context carries its ids (tenant, workflow, run_id,
task_id, attempt); `TaskLogFilter`, which the worker adds to the root logger's handlers, copies
them onto every log record emitted while it runs — the worker's own and the task function's
(sync functions too: they run in a copy of that context). Attributes a record already has
(from `extra=`) are left alone.

When an assignment carries a `traceparent` and the OpenTelemetry API is installed (the
`ratchet-sdk[otel]` extra), the task runs inside a span that is a child of the dispatcher's; user
spans inside the task nest under it. Without it, or for untraced runs, nothing beyond the ids is
done: OpenTelemetry is optional, and every use below checks for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import Coroutine
from typing import Any

from ratchet._proto import worker_pb2 as pb

try:
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the SDK works without OpenTelemetry; tasks are just not traced
    _otel = None  # type: ignore[assignment]
    _otel_context = None  # type: ignore[assignment]

log = logging.getLogger("ratchet.worker")

SCOPE = "ratchet.worker"
LOG_FIELDS = ("tenant", "workflow", "run_id", "task_id", "task_name", "attempt")

_TASK_IDS: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar(
    "ratchet_task_ids", default=None
)


class TaskLogFilter(logging.Filter):
    """Adds the running task's ids to log records (never overriding ones already set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _TASK_IDS.get()
        if ids:
            attrs = record.__dict__
            for key, value in ids.items():
                if key not in attrs:
                    attrs[key] = value
        return True


_FILTER = TaskLogFilter()


def install_log_filter() -> None:
    """Attach the ids filter to the root logger's handlers (idempotent)."""
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def current_ids() -> dict[str, object]:
    """The ids of the task running in this context ({} outside a task)."""
    return dict(_TASK_IDS.get() or {})


def start_task(
    coro: Coroutine[Any, Any, None], a: pb.Assignment, tenant: str
) -> asyncio.Task[None]:
    """Run `coro` (the attempt) as an asyncio task with the attempt's ids and span current.

    The context is set only around `create_task`, which copies it into the new task.
    """
    ids: dict[str, object] = {
        "tenant": tenant, "workflow": a.workflow, "run_id": a.run_id, "task_id": a.task_id,
        "task_name": a.task_name, "attempt": a.attempt,
    }
    token = _TASK_IDS.set(ids)
    try:
        if a.traceparent and _otel is not None:
            return _start_traced(coro, a, ids)
        return asyncio.create_task(coro)
    finally:
        _TASK_IDS.reset(token)


def _start_traced(
    coro: Coroutine[Any, Any, None], a: pb.Assignment, ids: dict[str, object]
) -> asyncio.Task[None]:
    parent = TraceContextTextMapPropagator().extract({"traceparent": a.traceparent})
    span = _otel.get_tracer(SCOPE).start_span(
        "task.run",
        context=parent,
        kind=_otel.SpanKind.CONSUMER,
        attributes={f"ratchet.{k}": v for k, v in ids.items() if isinstance(v, str | int)},
    )
    token = _otel_context.attach(_otel.set_span_in_context(span))
    try:
        task = asyncio.create_task(coro)
    finally:
        _otel_context.detach(token)
    task.add_done_callback(lambda _t: span.end())
    return task


def task_failed(exc: BaseException) -> None:
    """Log a task's failure (with its ids) and mark its span, if any, as failed."""
    log.info("task failed: %s: %s", type(exc).__name__, exc, extra=current_ids())
    if _otel is not None:
        span = _otel.get_current_span()
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(_otel.Status(_otel.StatusCode.ERROR, str(exc)[:500]))


def configure_from_env(service: str) -> None:
    """Export spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set and the application has
    not installed a tracer provider of its own (it then stays in charge)."""
    if _otel is None or not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        return
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    # Imported here, not at the top: the exporter is a separate, optional extra (`[otlp]`) and
    # costly to import, and only workers that export spans need it.
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter is not installed")
        return
    if isinstance(_otel.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _otel.set_tracer_provider(provider)
