"""Every stream, subject, KV bucket and header name in one place."""

from __future__ import annotations

from enum import StrEnum


class Stream(StrEnum):
    EVT = "EVT"
    CMD = "CMD"
    TASK = "TASK"
    DSP = "DSP"
    DLQ = "DLQ"
    # Task log lines (log_messages.LogBatch), kept until the replicator projects them.
    LOG = "LOG"
    # Stream chunks (log_messages.StreamChunk), one subject per run, short retention.
    CHUNK = "CHUNK"


class Header(StrEnum):
    MSG_ID = "Nats-Msg-Id"
    SCOPE = "Ratchet-Scope"
    EVENT_ID = "Ratchet-Event-Id"
    METADATA = "Ratchet-Metadata"
    IDEMPOTENCY_KEY = "Ratchet-Idempotency-Key"  # on an event: see docs/flow-control.md
    TRACEPARENT = "traceparent"
    DLQ_SUBJECT = "Ratchet-Dlq-Subject"
    DLQ_SEQ = "Ratchet-Dlq-Seq"
    DLQ_REASON = "Ratchet-Dlq-Reason"


class Bucket(StrEnum):
    WORKERS = "ratchet_workers"
    DISPATCHERS = "ratchet_dispatchers"


STREAM_SUBJECTS: dict[Stream, list[str]] = {
    Stream.EVT: ["evt.>"],
    Stream.CMD: ["cmd.>"],
    Stream.TASK: ["task.>"],
    Stream.DSP: ["dsp.>"],
    Stream.DLQ: ["dlq.>"],
    Stream.LOG: ["log.>"],
    Stream.CHUNK: ["chunk.>"],
}


def evt(tenant: str, key: str) -> str:
    return f"evt.{tenant}.{key}"


def cmd(tenant: str, verb: str) -> str:
    """verb: run.trigger | run.cancel | run.replay | run.wait | filter.changed | ..."""
    return f"cmd.{tenant}.{verb}"


def task_report(tenant: str, kind: str) -> str:
    return f"task.{tenant}.report.{kind}"


# A dispatcher's reports of one tenant published as one messages.ReportBatch.
REPORT_BATCH_KIND = "batch"


def task_report_batch(tenant: str) -> str:
    return task_report(tenant, REPORT_BATCH_KIND)


def task_changes(tenant: str) -> str:
    """Task and run transitions of one scheduler batch (messages.StateChanges)."""
    return f"task.{tenant}.changes"


def task_match(tenant: str) -> str:
    """Outcomes of matching one event (match_messages.EventMatches), from the matcher."""
    return f"task.{tenant}.match"


def dsp(dispatcher_id: str) -> str:
    return f"dsp.{dispatcher_id}"


def task_logs(tenant: str) -> str:
    """Log lines of one tenant's tasks (messages.log_messages.LogBatch)."""
    return f"log.{tenant}"


def run_chunks(tenant: str, run_id: str) -> str:
    """Stream chunks of one run, in the order its tasks put them."""
    return f"chunk.{tenant}.{run_id}"


def dlq(original_subject: str) -> str:
    return f"dlq.{original_subject}"


def tenant_of(subject: str) -> str:
    """The tenant token of any tenant-scoped subject (second token)."""
    return subject.split(".", 2)[1]


CMD_ALL = "cmd.>"
TASK_REPORTS_ALL = "task.*.report.>"
TASK_CHANGES_ALL = "task.*.changes"
TASK_MATCH_ALL = "task.*.match"
EVT_ALL = "evt.>"
LOGS_ALL = "log.>"
CHUNKS_ALL = "chunk.>"
MATCHER_CHANGES = "ratchet.matcher.changed"
OLAP_QUERY = "ratchet.olap.query"
# Core NATS broadcast of a revoked token's id: every API and dispatcher evicts it at once.
TOKEN_REVOKED = "ratchet.tokens.revoked"

# Task ids are safe subject tokens, tenants are validated to be too.
TENANT_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def valid_tenant(tenant: str) -> bool:
    return 0 < len(tenant) <= 64 and set(tenant) <= TENANT_ALPHABET
# The matcher tells the scheduler that an event satisfied a durable wait (messages.WaitSatisfied).
CMD_WAIT_VERB = "run.wait"


# Scheduler partitions (docs/scaling.md). The CMD and TASK streams rewrite the subjects of
# commands and worker reports as they store them, inserting the tenant's partition after the
# tenant: `cmd.<tenant>.<verb>` is kept as `cmd.<tenant>.<p>.<verb>` and
# `task.<tenant>.report.<kind>` as `task.<tenant>.report.<p>.<kind>`. The server computes
# <p> (FNV-1a of the tenant token, modulo the count), so publishers never need to know the
# partition count: it is fixed in the stream configuration when the stream is created, and
# libs/common/partitions.py computes the same function for the scheduler's own use.
CMD_PARTITION_SOURCE = "cmd.*.>"
REPORT_PARTITION_SOURCE = "task.*.report.>"


def cmd_partition_dest(count: int) -> str:
    return "cmd.{{wildcard(1)}}.{{partition(" + str(count) + ",1)}}.>"


def report_partition_dest(count: int) -> str:
    return "task.{{wildcard(1)}}.report.{{partition(" + str(count) + ",1)}}.>"


def cmd_partition(partition: int) -> str:
    """Filter of one partition's stored commands (CMD stream)."""
    return f"cmd.*.{partition}.>"


def reports_partition(partition: int) -> str:
    """Filter of one partition's stored worker reports (TASK stream)."""
    return f"task.*.report.{partition}.>"


def as_published(stored: str) -> str:
    """The subject a message was published on, from the one its stream stored it under (the
    partition token of commands and reports taken out): what a dead letter records, so that
    publishing it again goes where the original went."""
    tokens = stored.split(".")
    if tokens[0] == "cmd" and len(tokens) > 3 and tokens[2].isdigit():
        del tokens[2]
    elif (tokens[0] == "task" and len(tokens) > 4 and tokens[2] == "report"
          and tokens[3].isdigit()):
        del tokens[3]
    return ".".join(tokens)
