"""Prometheus metrics of every service, defined in one place so names never collide.

Counters are incremented once per batch (`inc(n)`), histograms observed once per task or run,
and gauges describing state (queue depth, slots, consumer lag) are computed when /metrics is
scraped (`Service.refresh_metrics`), so nothing on the hot path scans anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge, Histogram

from libs.common.subjects import Stream

log = logging.getLogger(__name__)

# Latencies from sub-millisecond hops to minutes-long runs.
_LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 1800.0,
)

# api -------------------------------------------------------------------------------------
API_RUNS_TRIGGERED = Counter(
    "ratchet_api_runs_triggered_total", "Runs triggered through the REST API"
)
WEBHOOK_REQUESTS = Counter(
    "ratchet_api_webhook_requests_total",
    "Requests to incoming webhooks, by source and outcome (accepted, forbidden, ...)",
    ["source", "outcome"],
)
OUTBOUND_DELIVERIES = Counter(
    "ratchet_api_outbound_delivery_attempts_total",
    "Attempts to deliver run callbacks and alert messages, by channel and result",
    ["channel", "result"],
)

# scheduler -------------------------------------------------------------------------------
TASK_TRANSITIONS = Counter(
    "ratchet_scheduler_task_transitions_total",
    "Task state transitions the scheduler recorded, by the state entered",
    ["state"],
)
TASKS = Gauge(
    "ratchet_scheduler_tasks",
    "Tasks of the active runs held by this scheduler, by state (read at scrape time)",
    ["state"],
)
QUEUE_DEPTH = Gauge(
    "ratchet_scheduler_queue_depth",
    "Tasks ready to run and waiting for a worker slot (QUEUED, backoff excluded)",
)
ACTIVE_RUNS = Gauge("ratchet_scheduler_active_runs", "Runs not yet finished")
WORKER_SLOTS = Gauge(
    "ratchet_scheduler_worker_slots",
    "Slots of the workers the scheduler knows: capacity, and in_use by assigned attempts",
    ["kind"],
)
WORKERS = Gauge("ratchet_scheduler_workers", "Workers in the registry as the scheduler sees it")
TRIGGER_TO_START = Histogram(
    "ratchet_scheduler_trigger_to_start_seconds",
    "From a task becoming runnable (its run's trigger for root tasks, its parents' success"
    " otherwise) to its start on a worker",
    buckets=_LATENCY_BUCKETS_S,
)
TASK_DURATION = Histogram(
    "ratchet_scheduler_task_duration_seconds",
    "From an attempt's start on a worker to its outcome, by outcome",
    ["status"],
    buckets=_LATENCY_BUCKETS_S,
)
RUN_DURATION = Histogram(
    "ratchet_scheduler_run_duration_seconds",
    "From a run's trigger to its end, by final status",
    ["status"],
    buckets=_LATENCY_BUCKETS_S,
)
SCHEDULER_BATCHES = Counter(
    "ratchet_scheduler_batches_total", "Batches the scheduler applied and committed"
)

# dispatcher ------------------------------------------------------------------------------
DISPATCHER_WORKERS = Gauge(
    "ratchet_dispatcher_connected_workers", "Workers with a live stream to this dispatcher"
)
DISPATCHER_SLOTS = Gauge(
    "ratchet_dispatcher_worker_slots", "Slots declared by the workers connected here"
)
DISPATCHER_ASSIGNMENTS = Counter(
    "ratchet_dispatcher_assignments_total", "Assignments pushed down worker streams"
)
DISPATCHER_EVENTS = Counter(
    "ratchet_dispatcher_task_reports_total", "Task reports from workers published to TASK"
)

# any service with durable consumers --------------------------------------------------------
CONSUMER_PENDING = Gauge(
    "ratchet_consumer_pending_messages",
    "Messages in the stream not yet delivered to the durable consumer (lag)",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "ratchet_consumer_ack_pending_messages",
    "Messages delivered to the durable consumer and not yet acked",
    ["consumer"],
)


async def refresh_consumer_lag(
    js: JetStreamContext | None, consumers: Iterable[tuple[Stream, str]], timeout_s: float = 1.0
) -> None:
    """Read num_pending / num_ack_pending of durable consumers (one request each, at scrape)."""
    if js is None:
        return
    for stream, durable in consumers:
        try:
            info = await asyncio.wait_for(js.consumer_info(stream.value, durable), timeout_s)
        except Exception as exc:  # the gauge keeps its last value; a scrape never fails on it
            log.debug("consumer_info %s/%s failed: %r", stream.value, durable, exc)
            continue
        CONSUMER_PENDING.labels(durable).set(info.num_pending or 0)
        CONSUMER_ACK_PENDING.labels(durable).set(info.num_ack_pending or 0)

