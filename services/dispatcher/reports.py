"""The report messages the dispatcher publishes.

Worker reports are published as ReportBatch messages of one tenant, each under
REPORT_BATCH_BYTES. A report that NATS refuses (too big, or rejected for its content) must not
wedge the rest: the isolating publisher splits its message and fails that one report's attempt
for good (libs/common/publish.py, stand_ins.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import ReportBatch, TaskReport, encode
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


def too_large(report: TaskReport, exc: PayloadTooLarge) -> TaskReport:
    """A completed report whose output is over the payload store's limit: failed for good."""
    return TaskReport.failed_for_good(
        task_id=report.task_id, attempt=report.attempt, worker_id=report.worker_id,
        ts_ms=report.ts_ms, error_type="PayloadTooLarge", message=str(exc),
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
