"""OpenTelemetry tracing shared by the services: setup, and cheap helpers for batched hops.

Tracing is off unless an exporter is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or the `otlp_endpoint` setting) or a test installs a span
processor. While it is off every helper returns at its first check, so the hot paths pay one
boolean test per batch.

A run's trace context travels as a W3C `traceparent` string: in the `traceparent` NATS header
and the `TriggerRun.traceparent` field (api → scheduler), in the run's row and in every
`Assignment` (scheduler → dispatcher), and in the gRPC `Assignment.traceparent` field
(dispatcher → worker, whose stream multiplexes many runs, so per-call metadata cannot carry
it). Hops create short spans with explicit start/end times for the transitions they already
record instead of holding spans open across batches; only sampled contexts are propagated.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
Attributes = Mapping[str, AttributeValue]

_PROPAGATOR = TraceContextTextMapPropagator()


class _State:
    enabled = False
    provider: TracerProvider | None = None
    tracers: dict[str, Tracer] = {}


def enabled() -> bool:
    """True when spans are exported somewhere; every helper below is a no-op otherwise."""
    return _State.enabled


def set_enabled(flag: bool) -> None:
    """Switch span creation on or off (tests turn it off again after installing an exporter)."""
    _State.enabled = flag and _State.provider is not None


def tracer_provider(service: str = "ratchet") -> TracerProvider:
    """The process's SDK tracer provider, installed as the global one on first use.

    The global provider can be set once per process, so everything (services running
    in-process in tests included) shares it; `add_span_processor` adds exporters to it.
    """
    if _State.provider is None:
        current = trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            _State.provider = current
        else:
            attrs = {"service.name": f"ratchet-{service}"}
            provider = TracerProvider(resource=Resource.create(attrs))
            trace.set_tracer_provider(provider)
            # set_tracer_provider refuses (with a warning) when one was set before us.
            installed = trace.get_tracer_provider()
            _State.provider = installed if isinstance(installed, TracerProvider) else provider
    return _State.provider


def add_span_processor(processor: SpanProcessor, service: str = "ratchet") -> None:
    """Export spans through `processor` and switch tracing on."""
    tracer_provider(service).add_span_processor(processor)
    _State.enabled = True


def configure(service: str, otlp_endpoint: str = "") -> bool:
    """Install the OTLP (gRPC) exporter when an endpoint is configured; returns whether it did."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    endpoint = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or otlp_endpoint
    )
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # The exporter reads the standard env vars itself; pass ours only when they are unset.
    explicit = None if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else endpoint
    add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=explicit)), service)
    log.info("exporting traces over OTLP", extra={"otlp_endpoint": endpoint})
    return True


def shutdown() -> None:
    """Flush and stop the exporters (end of process)."""
    if _State.provider is not None:
        _State.provider.shutdown()
    _State.enabled = False


def tracer(name: str) -> Tracer:
    cached = _State.tracers.get(name)
    if cached is None:
        cached = _State.tracers[name] = tracer_provider().get_tracer(name)
    return cached


def context_from(traceparent: str | None) -> Context | None:
    """The parent context a `traceparent` string describes (None for none or garbage)."""
    if not traceparent:
        return None
    # The common case, version 00 as we write it, parsed by slicing: the propagator's regex
    # and carrier plumbing cost as much as the span itself.
    if len(traceparent) == 55 and traceparent.startswith("00-"):
        try:
            sc = SpanContext(
                trace_id=int(traceparent[3:35], 16),
                span_id=int(traceparent[36:52], 16),
                is_remote=True,
                trace_flags=TraceFlags(int(traceparent[53:55], 16)),
            )
        except ValueError:
            return None
        return trace.set_span_in_context(NonRecordingSpan(sc)) if sc.is_valid else None
    ctx = _PROPAGATOR.extract({TRACEPARENT: traceparent})
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def traceparent_of(span: Span) -> str | None:
    """The `traceparent` to hand on for `span`, or None when it is not sampled.

    Unsampled contexts are not propagated: downstream hops then skip tracing entirely.
    """
    sc = span.get_span_context()
    if not sc.is_valid or not sc.trace_flags.sampled:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def record_span(
    scope: str,
    name: str,
    parent: str | None,
    attributes: Attributes | None = None,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    error: str | None = None,
    events: Sequence[tuple[str, int]] = (),
) -> str | None:
    """Record a finished span (child of `parent`, a root when None) and return its traceparent.

    Times are epoch milliseconds; by default the span covers this call. `error` marks it
    failed; `events` are (name, epoch ms) points inside it.
    """
    if not _State.enabled:
        return parent
    span = tracer(scope).start_span(
        name,
        context=context_from(parent),
        kind=kind,
        attributes=attributes,
        start_time=start_ms * 1_000_000 if start_ms else None,
    )
    for event, at_ms in events:
        span.add_event(event, timestamp=at_ms * 1_000_000)
    if error is not None:
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
    out = traceparent_of(span)
    end = end_ms * 1_000_000 if end_ms else None
    if end is not None and start_ms and end_ms and end_ms < start_ms:
        end = start_ms * 1_000_000  # clocks of different hosts: never a negative span
    span.end(end_time=end)
    return out


def child_traceparent(scope: str, name: str, parent: str | None, attributes: Attributes) -> str:
    """One hop of a traced message: record a span under `parent` and return the context to
    forward. Returns `parent` unchanged (or "") when it is absent or tracing is off."""
    if not parent or not _State.enabled:
        return parent or ""
    return record_span(scope, name, parent, attributes, kind=SpanKind.CONSUMER) or parent


@contextlib.contextmanager
def open_span(
    scope: str,
    name: str,
    parent: str | None,
    attributes: Attributes | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[str | None]:
    """A span around a block; yields the traceparent to propagate (None when not traced)."""
    if not _State.enabled:
        yield None
        return
    span = tracer(scope).start_span(
        name, context=context_from(parent), kind=kind, attributes=attributes
    )
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=True):
            yield traceparent_of(span)
    finally:
        span.end()
