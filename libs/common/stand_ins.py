"""What is published in place of a message NATS refuses for what it is (too big, rejected).

Retrying such a message would hold back every message behind it, for every tenant, so the
isolating publisher (libs/common/publish.py) sets it aside and publishes what this module says
stands in for it:

- a dispatch batch (`dsp.<dispatcher>`, from the scheduler's outbox): each assignment it held
  fails its attempt for good (`PayloadTooLarge`), and its cancels and wakes, which are small,
  go on in a batch of their own;
- a batch of worker reports (`task.<tenant>.report.batch`, from a dispatcher): split into one
  message per report; a single report that is still refused fails its attempt for good,
  unless it is itself no outcome (a state change, a log line) — nothing can stand in for
  that one;
- anything else: nothing. The publisher dead-letters the message (libs/common/publish.py).

Every stand-in has a msg-id derived from the message it replaces, so a relay retried after a
crash publishes the same stand-ins and the stream drops the duplicates.
"""

from __future__ import annotations

import logging

import msgspec
import nats.errors

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.logs import now_ms
from libs.common.messages import (
    DISPATCH_DECODER,
    REPORT_BATCH_DECODER,
    DispatchBatch,
    ReportBatch,
    TaskReport,
    encode,
)

log = logging.getLogger(__name__)

_JS_MESSAGE_TOO_LARGE = 10054  # JetStream's "message size exceeds maximum allowed"


def stand_ins(item: Outgoing, error: Exception) -> list[Outgoing]:
    """The messages to publish in place of `item`, which NATS refused with `error`; empty when
    nothing can stand in for it (the caller dead-letters it)."""
    # The second token is the dispatcher id or the tenant; subjects.py spells the rest.
    _, _, rest = item.subject.partition(".")
    second = rest.partition(".")[0]
    try:
        if item.subject == subjects.dsp(rest):
            return _for_dispatch(item, error, DISPATCH_DECODER.decode(item.payload))
        if item.subject == subjects.task_report_batch(second):
            return _for_reports(item, error, REPORT_BATCH_DECODER.decode(item.payload))
    except msgspec.DecodeError:
        return []
    return []


def _for_dispatch(item: Outgoing, error: Exception, batch: DispatchBatch) -> list[Outgoing]:
    out: list[Outgoing] = []
    for a in batch.assignments:
        report = TaskReport.failed_for_good(
            task_id=a.task_id, attempt=a.attempt, worker_id=a.worker_id, ts_ms=now_ms(),
            error_type="PayloadTooLarge",
            message=f"the assignment is {len(item.payload)} bytes, more than NATS accepts in "
                    f"one message ({error!r}); its input and parents' outputs must be "
                    "offloaded to the payload store",
        )
        out.append(Outgoing(subjects.task_report(a.tenant, "failed"), encode(report),
                            f"task:{a.task_id}:{a.attempt}:unsendable"))
        log.error("task %s attempt %d failed: its assignment cannot be published (%r)",
                  a.task_id, a.attempt, error, extra={"tenant": a.tenant})
    if batch.cancels or batch.wakes:
        rest = DispatchBatch(cancels=batch.cancels, wakes=batch.wakes)
        out.append(Outgoing(item.subject, encode(rest), item.msg_id + ":cancels"))
    return out


def _for_reports(item: Outgoing, error: Exception, batch: ReportBatch) -> list[Outgoing]:
    if len(batch.reports) > 1:  # find the report at fault; the others go through
        return [
            Outgoing(item.subject, encode(ReportBatch(reports=[report])), f"{item.msg_id}:{i}")
            for i, report in enumerate(batch.reports)
        ]
    if not batch.reports:
        return []
    report = batch.reports[0]
    failed = unpublishable(report, error, len(item.payload))
    if failed is None:
        return []
    assert failed.error is not None
    log.error("task %s attempt %d: %s", report.task_id, report.attempt, failed.error.message,
              extra={"tenant": subjects.tenant_of(item.subject)})
    return [Outgoing(item.subject, encode(ReportBatch(reports=[failed])),
                     f"task:{report.task_id}:{report.attempt}:unpublishable")]


def _too_large(error: Exception) -> bool:
    """The server's max payload (nats-py's MaxPayloadError) or the stream's max_msg_size."""
    if isinstance(error, nats.errors.MaxPayloadError) or "payload" in str(error).lower():
        return True
    return getattr(error, "err_code", None) == _JS_MESSAGE_TOO_LARGE


def unpublishable(report: TaskReport, error: Exception, size: int) -> TaskReport | None:
    """What stands in for a report NATS refused: its attempt, failed for good.

    None for a report that is no outcome (a state change, a log line): shrinking it cannot
    help, and retrying it would wedge the rest.
    """
    if report.kind not in ("completed", "failed"):
        return None
    if _too_large(error):
        error_type = "PayloadTooLarge"
        message = (f"this attempt's report is {size} bytes, more than NATS accepts in one "
                   f"message ({error}); payloads above RATCHET_PAYLOAD_INLINE_BYTES must go to "
                   "the payload store")
    else:
        error_type = "Unpublishable"
        message = f"this attempt's report could not be published: {error!r}"
    return TaskReport.failed_for_good(
        task_id=report.task_id, attempt=report.attempt, worker_id=report.worker_id,
        ts_ms=report.ts_ms, error_type=error_type, message=message,
    )
