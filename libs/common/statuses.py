"""Task and run statuses, and the sets built from them: the one definition every service uses.

The values are the wire and storage form (PostgreSQL columns, TaskStateChanged / RunStateChanged
messages, ClickHouse rows, the REST API). The enums are `StrEnum`s, so a plain string read back
from any of those compares and hashes equal to its member: `"FAILED" in RUN_TERMINAL` holds.

SKIPPED is terminal. It is the end state of an `on_failure` / `on_success` hook whose condition
did not hold when its run finished (the run failed, so `on_success` is skipped, or the
reverse): nothing moves the task on from there, and the run is finished around it. A replay
resets the hooks to PENDING as it does any task it redoes, which is a new generation rather
than a transition out of SKIPPED. (The OLAP side used to leave SKIPPED out because the
scheduler writes it to PostgreSQL only and never publishes it as a transition, so it never
reaches ClickHouse; counting it as terminal there changes no result.)
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where one task of a run stands."""

    PENDING = "PENDING"  # waiting for its parents (or, for a hook, for the run to end)
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    SKIPPED = "SKIPPED"  # an on_failure / on_success hook whose condition did not hold


class RunStatus(StrEnum):
    """Where a run stands as a whole."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


TASK_TERMINAL: frozenset[TaskStatus] = frozenset(
    {
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.TIMED_OUT,
        TaskStatus.SKIPPED,
    }
)
# Ended without succeeding: what makes a run fail (and an on_failure hook run).
TASK_FAILED_LIKE: frozenset[TaskStatus] = frozenset(
    {TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT}
)
# Handed to a worker: the attempt holds a worker slot until the worker reports it stopped.
TASK_IN_FLIGHT: frozenset[TaskStatus] = frozenset({TaskStatus.ASSIGNED, TaskStatus.RUNNING})

RUN_TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}
)
