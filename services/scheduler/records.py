"""The plain records the scheduler's engine decides with and its persistence stores.

A leaf: nothing of the scheduler is imported here, so the engine's helpers, the batch's
Effects and the PostgreSQL modules (persistence/) can all share these types without
importing one another. Behaviour lives with the modules that use them: the engine decides
(engine/), persistence writes and reads back (persistence/).

- timers: the kinds of timer and the key of a stored one (engine/_timers.py);
- history and attempts: the rows a batch appends (engine/_history.py);
- durable tasks: one position of a task's durable log (engine/_durable.py);
- a run's inbox: one signal or waitpoint completion sent to it (engine/_inbox.py);
- concurrency: who holds slots of which key (engine/admission/concurrency.py);
- rate limits: a key's definition, what a task needs, a recorded start
  (engine/admission/ratelimit.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from libs.common.messages import DurableStep

# timers ------------------------------------------------------------------------------------
TIMER_RETRY = "retry"
TIMER_EXEC = "exec"
TIMER_SCHED = "sched"
# A durable wait's deadline (engine/_durable.py): memory only, re-armed from the durable log
# after a restart; its entry carries the log position where others carry the attempt.
TIMER_DURABLE = "durable"
TIMER_KINDS = (TIMER_EXEC, TIMER_SCHED, TIMER_RETRY)

TimerKey = tuple[str, str, str]  # (tenant, task_id, kind)


# history and attempts -------------------------------------------------------------------------
@dataclass(slots=True)
class AttemptRow:
    tenant: str
    task_id: str
    attempt: int
    status: str
    worker_id: str | None
    error: bytes | None  # JSON
    started_ms: int | None
    finished_ms: int | None
    created_ms: int  # the task's: task_attempts is partitioned by it (migration 051)


@dataclass(slots=True)
class HistoryRow:
    tenant: str
    run_id: str
    task_id: str | None
    task_name: str | None
    attempt: int | None
    kind: str
    detail: bytes | None  # JSON
    ts_ms: int


# durable tasks -------------------------------------------------------------------------------
PENDING = "pending"
DONE = "done"


@dataclass(slots=True, eq=False)
class Entry:
    """One position of a durable task's log (a wait, a memoized value, a DAG condition)."""

    tenant: str
    task_id: str
    run_id: str
    position: int
    kind: str  # wait | now | cond
    spec: bytes
    status: str  # PENDING | DONE
    result: bytes | None
    registered_ms: int
    deadline_ms: int | None = None
    waiting_attempt: int | None = None  # the attempt parked here (or owed a wake-up)
    conds: list[dict[str, Any]] = field(default_factory=list)

    def step(self) -> DurableStep:
        return DurableStep(position=self.position, kind=self.kind, spec=self.spec,
                           result=self.result or b"", done=self.status == DONE)


# a run's inbox: signals and waitpoint completions (engine/_inbox.py) -------------------------
SENT = "pending"  # in the inbox, no wait has taken it yet
DELIVERED = "delivered"
REFUSED = "refused"  # the inbox was full


@dataclass(slots=True, eq=False)
class InboxItem:
    """One message sent to a run: a signal, or a waitpoint's completion."""

    tenant: str
    run_id: str
    id: str
    seq: int  # the order the scheduler received the run's messages in
    kind: str  # signal | waitpoint
    name: str  # the signal's name, or the waitpoint id
    payload: bytes  # JSON
    status: str
    sent_ms: int
    task_id: str | None = None  # where it was delivered
    position: int | None = None
    delivered_ms: int | None = None


# concurrency ---------------------------------------------------------------------------------
SemId = tuple[str, str]  # (tenant, key)

_RUN_MARK = "r"
_TASK_MARK = "t"
_NO_ATTEMPT = "-"


class Holder(msgspec.Struct, frozen=True):
    """Who holds (or waits for) concurrency slots: a run, or one attempt of a task.

    A msgspec Struct: hashed and compared in C, which matters because holders key the
    semaphores' dicts and are looked up several times per task.
    """

    run_id: str | None = None  # set for a run's workflow-level holder
    task_id: str | None = None  # set, with `attempt`, for a task attempt's holder
    attempt: int = 0

    @classmethod
    def of_run(cls, run_id: str) -> Holder:
        return cls(run_id=run_id)

    @classmethod
    def of_task(cls, task_id: str, attempt: int) -> Holder:
        return cls(task_id=task_id, attempt=attempt)

    def format(self) -> str:
        """The text stored in PostgreSQL (concurrency_holders.holder)."""
        if self.run_id is not None:
            return f"{_RUN_MARK}:{self.run_id}:{_NO_ATTEMPT}"
        return f"{_TASK_MARK}:{self.task_id}:{self.attempt}"

    @classmethod
    def parse(cls, text: str) -> Holder:
        """Read back what `format` wrote; anything else is a ValueError."""
        mark, sep, rest = text.partition(":")
        ident, sep2, attempt = rest.rpartition(":")
        if sep and sep2 and ident:
            if mark == _RUN_MARK and attempt == _NO_ATTEMPT:
                return cls.of_run(ident)
            if mark == _TASK_MARK and attempt.isdigit():
                return cls.of_task(ident, int(attempt))
        raise ValueError(
            f"not a concurrency holder: {text!r} (expected 'r:<run id>:-' or 't:<task id>:<attempt>')"
        )


HolderRow = tuple[str, str, Holder]  # (tenant, key, holder): one concurrency_holders row


@dataclass(frozen=True, slots=True)
class SemRef:
    """One concurrency key a holder needs: `key` is already namespaced and evaluated."""

    tenant: str
    key: str
    max_runs: int
    strategy: str

    @property
    def id(self) -> SemId:
        return (self.tenant, self.key)


# rate limits ---------------------------------------------------------------------------------
LimitId = tuple[str, str]  # (tenant, key)


@dataclass(frozen=True, slots=True)
class LimitDef:
    limit: int
    per_ms: int
    burst: int | None = None


@dataclass(frozen=True, slots=True)
class Need:
    """Units of one key a task takes when it starts (key and units evaluated at enqueue)."""

    key: str
    units: int
    dynamic: LimitDef | None = None  # limit/per declared inline for a dynamic key


@dataclass(slots=True)
class Admission:
    """One rate-limit start: `units` of `key` taken at `ts_ms` by a task attempt."""

    tenant: str
    key: str
    ts_ms: int
    units: int
    task_id: str
    attempt: int
