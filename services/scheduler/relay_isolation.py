"""What the outbox relay does with a message NATS refuses for what it is (too big, rejected).

Retrying such a message would hold back every message behind it, for every tenant; it is
taken out instead. An assignment that cannot reach its dispatcher fails its attempt for good
(a `failed` report, which this scheduler then applies like any other); anything else is
logged and dropped.
"""

from __future__ import annotations

import logging

import msgspec

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import (
    DISPATCH_DECODER,
    DispatchBatch,
    TaskError,
    TaskReport,
    encode,
)

log = logging.getLogger(__name__)


def replacements(item: Outgoing, error: Exception, now_ms: int) -> list[Outgoing]:
    """The messages to publish in place of `item`: a failed report per assignment it held."""
    if not item.subject.startswith("dsp."):
        log.error("outbox message %s (%d bytes) dropped: NATS refused it (%r)",
                  item.msg_id, len(item.payload), error)
        return []
    try:
        batch = DISPATCH_DECODER.decode(item.payload)
    except msgspec.DecodeError:
        return []
    out: list[Outgoing] = []
    for a in batch.assignments:
        report = TaskReport(
            kind="failed", task_id=a.task_id, attempt=a.attempt, worker_id=a.worker_id,
            ts_ms=now_ms,
            error=TaskError(
                type="PayloadTooLarge", non_retryable=True,
                message=f"the assignment is {len(item.payload)} bytes, more than NATS accepts "
                        f"in one message ({error!r}); its input and parents' outputs must be "
                        "offloaded to the payload store",
            ),
        )
        out.append(Outgoing(subjects.task_report(a.tenant, "failed"), encode(report),
                            f"task:{a.task_id}:{a.attempt}:unsendable"))
        log.error("task %s attempt %d failed: its assignment cannot be published (%r)",
                  a.task_id, a.attempt, error, extra={"tenant": a.tenant})
    # Cancels in the same batch are small; they go on without the assignments.
    if batch.cancels:
        out.append(Outgoing(item.subject, encode(DispatchBatch(cancels=batch.cancels)),
                            item.msg_id + ":cancels"))
    return out
