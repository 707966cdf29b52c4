"""The report messages the dispatcher publishes, and what stands in for one NATS refuses.

Worker reports are published as ReportBatch messages of one tenant, each under
REPORT_BATCH_BYTES. A report that NATS refuses (too big, or rejected for its content) must not
wedge the rest: `unpublishable` turns it into a final failure of its attempt.
"""

from __future__ import annotations

from collections.abc import Iterator

import nats.errors

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import ReportBatch, TaskError, TaskReport, encode
from libs.common.payloads import PayloadTooLarge

# One ReportBatch message stays well under NATS's default 1 MiB max payload.
REPORT_BATCH_BYTES = 512 * 1024


class ReportMessage:
    """One ReportBatch message to publish: a tenant's reports and a fixed msg-id."""

    __slots__ = ("msg_id", "reports", "tenant")

    def __init__(self, tenant: str, reports: list[TaskReport], msg_id: str) -> None:
        self.tenant = tenant
        self.reports = reports
        self.msg_id = msg_id

    def outgoing(self) -> Outgoing:
        return Outgoing(subjects.task_report_batch(self.tenant),
                        encode(ReportBatch(reports=self.reports)), self.msg_id)

    def size(self) -> int:
        return len(encode(ReportBatch(reports=self.reports)))


def unpublishable(report: TaskReport, error: Exception, size: int) -> TaskReport:
    """What to publish in place of a report NATS refused: its attempt, failed for good.

    A report that is itself a failure or a bare state change cannot be helped by shrinking it;
    it is returned unchanged (and dropped by the caller), as retrying it would wedge the rest.
    """
    if report.kind not in ("completed", "failed"):
        return report
    if isinstance(error, nats.errors.MaxPayloadError) or "payload" in str(error).lower():
        err = TaskError(
            type="PayloadTooLarge", non_retryable=True,
            message=f"this attempt's report is {size} bytes, more than NATS accepts in one "
                    f"message ({error}); payloads above RATCHET_PAYLOAD_INLINE_BYTES must go to "
                    "the payload store",
        )
    else:
        err = TaskError(type="Unpublishable", non_retryable=True,
                        message=f"this attempt's report could not be published: {error!r}")
    return TaskReport(kind="failed", task_id=report.task_id, attempt=report.attempt,
                      worker_id=report.worker_id, ts_ms=report.ts_ms, error=err)


def too_large(report: TaskReport, exc: PayloadTooLarge) -> TaskReport:
    return TaskReport(
        kind="failed", task_id=report.task_id, attempt=report.attempt,
        worker_id=report.worker_id, ts_ms=report.ts_ms,
        error=TaskError(type="PayloadTooLarge", message=str(exc), non_retryable=True),
    )


def chunks(reports: list[TaskReport]) -> Iterator[list[TaskReport]]:
    """Split reports so each ReportBatch stays under REPORT_BATCH_BYTES (outputs can be big;
    a single report larger than that goes alone, as it always did)."""
    chunk: list[TaskReport] = []
    size = 0
    for r in reports:
        cost = 128 + len(r.output) + (len(r.error.message) + len(r.error.traceback) if r.error else 0)
        if chunk and size + cost > REPORT_BATCH_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(r)
        size += cost
    if chunk:
        yield chunk
