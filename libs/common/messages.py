"""Internal wire messages (msgpack via msgspec). Event payloads on evt.* stay JSON."""

from __future__ import annotations

import msgspec

# Tags make one decoder read a union of command kinds.


class ForkSeed(msgspec.Struct, kw_only=True):
    """What a forked run starts with: the recorded outputs of the tasks it does not run again
    (by task name), and for a durable task forked `from_step`, its log before that step."""

    from_run_id: str
    outputs: dict[str, bytes] = {}
    logs: dict[str, list[DurableStep]] = {}


class TriggerRun(msgspec.Struct, tag="trigger", kw_only=True):
    run_id: str
    workflow: str
    version_id: str
    input: bytes  # JSON
    metadata: dict[str, str] = {}
    priority: int | None = None
    additional: dict[str, bytes] = {}  # e.g. {"filter_payload": b"{...}"}
    source: str = "api"  # api | event | cron | schedule
    sticky_worker: str | None = None
    traceparent: str | None = None  # W3C trace context of the trigger (sampled runs only)
    # A child run (started from inside a task): its parent run and task, and how deep it is
    # (a top-level run is 0). Set by the API after checking the parent; docs/children.md.
    parent_run_id: str | None = None
    parent_task_id: str | None = None
    parent_task: str | None = None
    depth: int = 0
    # A fork (docs/interaction.md): what the new run takes from the run it was forked from.
    fork: ForkSeed | None = None
    # An idempotency key the scheduler claims before starting the run (an event's
    # Ratchet-Idempotency-Key header); API triggers claim theirs in the API. flow-control.md
    idempotency_key: str | None = None


class CancelRun(msgspec.Struct, tag="cancel", kw_only=True):
    run_id: str
    reason: str = "cancelled by user"


class CancelRuns(msgspec.Struct, tag="cancels", kw_only=True):
    """Several runs cancelled for one reason in one message: what cancelling a parent sends
    for its unfinished children (chunked, see engine/_children.py)."""

    run_ids: list[str]
    reason: str = "cancelled by user"

    def each(self) -> list[CancelRun]:
        return [CancelRun(run_id=r, reason=self.reason) for r in self.run_ids]


class ReplayRun(msgspec.Struct, tag="replay", kw_only=True):
    run_id: str


class TriggerRuns(msgspec.Struct, tag="triggers", kw_only=True):
    """Several triggers in one message: what one bulk request starts (chunked under
    TRIGGER_BATCH_BYTES). One publish, delivery and ack instead of one per run."""

    runs: list[TriggerRun]


class WaitSatisfied(msgspec.Struct, tag="wait", kw_only=True):
    """The matcher saw an event that satisfies condition `index` of a durable wait (or a DAG
    task's `wait_for`) registered at `position` of task `task_id`."""

    task_id: str
    position: int
    index: int
    event_id: str
    payload: bytes  # the event's JSON body


class SignalRun(msgspec.Struct, tag="signal", kw_only=True):
    """A message for one run (docs/interaction.md): a named signal (`kind` "signal"), or the
    completion of a waitpoint (`kind` "waitpoint", `name` its id). The scheduler hands it to
    a durable wait of the run asking for it, or keeps it in the run's inbox until one does."""

    run_id: str
    signal_id: str  # unique: a redelivered command is applied once
    name: str
    payload: bytes  # JSON
    kind: str = "signal"


# Messages a run's inbox keeps before a wait takes them; the API refuses more (429).
MAX_PENDING_SIGNALS = 1000
MAX_SIGNAL_BYTES = 64 * 1024  # a signal's or waitpoint completion's JSON payload
MAX_STATE_BYTES = 64 * 1024  # ctx.set_state's JSON value

Command = (TriggerRun | TriggerRuns | CancelRun | CancelRuns | ReplayRun | WaitSatisfied
           | SignalRun)
TRIGGER_BATCH_BYTES = 128 * 1024  # well under NATS max_payload; bounds a CMD fetch in memory


class TaskError(msgspec.Struct, kw_only=True):
    type: str
    message: str
    traceback: str = ""
    non_retryable: bool = False


class DurableStep(msgspec.Struct, kw_only=True):
    """One entry of a durable task's log (proto DurableStep): a wait or a memoized value."""

    position: int
    kind: str  # wait | now
    spec: bytes  # canonical JSON
    result: bytes = b""  # JSON once done
    done: bool = False


class TaskReport(msgspec.Struct, kw_only=True):
    """A worker's account of one attempt, relayed by its dispatcher."""

    kind: str  # started | completed | failed | refresh | log | lost | wait
    task_id: str
    attempt: int
    worker_id: str
    ts_ms: int
    output: bytes = b""
    error: TaskError | None = None
    refresh_ms: int = 0
    log: str = ""
    step: DurableStep | None = None  # for "wait"

    @classmethod
    def failed_for_good(
        cls, *, task_id: str, attempt: int, worker_id: str, ts_ms: int, error_type: str,
        message: str,
    ) -> TaskReport:
        """A terminal failure of one attempt: a `failed` report whose error is non-retryable,
        so the scheduler fails the task without spending its remaining retries.

        What services publish when an attempt cannot go on for a reason no retry would cure
        (its assignment or its report is larger than NATS accepts, an output too large to
        offload).
        """
        return cls(
            kind="failed", task_id=task_id, attempt=attempt, worker_id=worker_id, ts_ms=ts_ms,
            error=TaskError(type=error_type, message=message, non_retryable=True),
        )


class Assignment(msgspec.Struct, kw_only=True):
    tenant: str
    worker_id: str
    task_id: str
    run_id: str
    attempt: int
    workflow: str
    task_name: str
    action: str
    input: bytes
    parent_outputs: dict[str, bytes] = {}
    additional: dict[str, bytes] = {}
    timeout_ms: int = 0
    metadata: dict[str, str] = {}
    traceparent: str | None = None  # the run's trace context, for the dispatcher and worker
    durable_log: list[DurableStep] = []  # a durable task's log, replayed by the new attempt


class CancelTask(msgspec.Struct, kw_only=True):
    tenant: str
    worker_id: str
    task_id: str
    attempt: int
    reason: str


class WakeTask(msgspec.Struct, kw_only=True):
    """Resume a waiting durable task at `position` with `result` (JSON)."""

    tenant: str
    worker_id: str
    task_id: str
    attempt: int
    position: int
    result: bytes


class DispatchBatch(msgspec.Struct, kw_only=True):
    assignments: list[Assignment] = []
    cancels: list[CancelTask] = []
    wakes: list[WakeTask] = []


class TaskStateChanged(msgspec.Struct, kw_only=True):
    tenant: str
    run_id: str
    task_id: str
    task_name: str
    workflow: str
    attempt: int
    state: str
    ts_ms: int
    worker_id: str = ""
    queued_ms: int = 0
    started_ms: int = 0
    error: TaskError | None = None


class RunStateChanged(msgspec.Struct, kw_only=True):
    tenant: str
    run_id: str
    workflow: str
    status: str
    ts_ms: int
    created_ms: int = 0
    # Set for a child run, so a waiting parent (a durable task) learns its child ended.
    parent_run_id: str | None = None
    parent_task_id: str | None = None


class WorkerInfo(msgspec.Struct, kw_only=True):
    """Registry entry a dispatcher keeps in the workers KV bucket."""

    worker_id: str
    tenant: str
    name: str
    dispatcher_id: str
    actions: list[str]
    slots: int
    labels: dict[str, str] = {}
    heartbeat_ms: int = 0
    # One stream's life: a new session means the worker (re)registered at registered_ms,
    # holding exactly the attempts listed in `holding` (task id, attempt).
    session: str = ""
    registered_ms: int = 0
    holding: list[tuple[str, int]] = []
    durable_slots: int = 1000  # durable tasks that may wait at once without a regular slot


ENCODER = msgspec.msgpack.Encoder()
COMMAND_DECODER = msgspec.msgpack.Decoder(Command)
REPORT_DECODER = msgspec.msgpack.Decoder(TaskReport)
DISPATCH_DECODER = msgspec.msgpack.Decoder(DispatchBatch)
WORKER_INFO_DECODER = msgspec.msgpack.Decoder(WorkerInfo)


class RunStateSet(msgspec.Struct, kw_only=True):
    """A durable task of the run set its state (`ctx.set_state`) or made a waitpoint; the
    values are read from PostgreSQL (GET /runs/{id}/state), this only says they changed."""

    tenant: str
    run_id: str
    task_id: str
    ts_ms: int


class StateChanges(msgspec.Struct, kw_only=True):
    """The transitions of one scheduler batch for one tenant, in the order they happened.

    One message per batch rather than one per transition: a task's life is four or five
    transitions, and publishing, storing and acking each one separately cost more than the
    task itself.
    """

    tasks: list[TaskStateChanged] = []
    runs: list[RunStateChanged] = []
    states: list[RunStateSet] = []  # runs whose ctx.set_state changed (docs/interaction.md)


TASK_STATE_DECODER = msgspec.msgpack.Decoder(TaskStateChanged)
RUN_STATE_DECODER = msgspec.msgpack.Decoder(RunStateChanged)
STATE_CHANGES_DECODER = msgspec.msgpack.Decoder(StateChanges)


class RunChanges(msgspec.Struct, kw_only=True):
    """A `StateChanges` message read for its run transitions only: msgpack skips the task
    transitions without building them (a reader that wants only ended runs, the notifier)."""

    runs: list[RunStateChanged] = []


RUN_CHANGES_DECODER = msgspec.msgpack.Decoder(RunChanges)


class ReportBatch(msgspec.Struct, kw_only=True):
    """Worker reports of one tenant that a dispatcher publishes together, in arrival order."""

    reports: list[TaskReport] = []


REPORT_BATCH_DECODER = msgspec.msgpack.Decoder(ReportBatch)


def encode(msg: msgspec.Struct) -> bytes:
    return ENCODER.encode(msg)
