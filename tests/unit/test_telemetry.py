"""Trace-context helpers: parsing, and costing nothing while tracing is off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace

from libs.common import telemetry

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def tracing_off() -> Iterator[None]:
    was = telemetry.enabled()
    telemetry.set_enabled(False)
    yield
    telemetry.set_enabled(was)


def test_parses_a_traceparent_into_a_remote_parent() -> None:
    ctx = telemetry.context_from(TP)
    assert ctx is not None
    sc = trace.get_current_span(ctx).get_span_context()
    assert (sc.trace_id, sc.span_id, sc.is_remote) == (
        0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True
    )
    assert sc.trace_flags.sampled


@pytest.mark.parametrize(
    "bad",
    [
        None, "", "garbage",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # all-zero span id
        "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ],
)
def test_rejects_invalid_traceparents(bad: str | None) -> None:
    assert telemetry.context_from(bad) is None


def test_helpers_pass_context_through_while_off(tracing_off: None) -> None:
    assert telemetry.record_span("s", "x", TP) == TP
    assert telemetry.record_span("s", "x", None) is None
    assert telemetry.child_traceparent("s", "x", TP, {}) == TP
    assert telemetry.child_traceparent("s", "x", None, {}) == ""
    with telemetry.open_span("s", "x", TP) as tp:
        assert tp is None  # nothing to propagate: downstream hops skip tracing
