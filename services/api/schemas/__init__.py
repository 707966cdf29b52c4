"""Request and response bodies of the REST API (msgspec Structs → OpenAPI at /schema).

Constraints a field can state on its own are msgspec `Meta` annotations: the decoder enforces
them (a 400 naming the field) and the OpenAPI schema shows them, so the two cannot drift.
Rules across fields stay in the handlers and are described in the docstrings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from msgspec import Meta

from libs.common import events as evt
from libs.common import specs
from libs.common.statuses import RunStatus, TaskStatus

WorkflowName = specs.Name
WorkflowNameParam = Annotated[str, Parameter(
    min_length=1, max_length=128, pattern=specs.NAME_PATTERN, description="a workflow's name",
)]
Priority = Annotated[int, Meta(ge=1, le=3, description="1 (lowest) to 3")]
EventKey = Annotated[str, Meta(
    min_length=1, max_length=evt.MAX_KEY_CHARS, pattern=f"^{evt.KEY_PATTERN}$",
    description="dot-separated tokens of letters, digits, '_', '-', ':'",
)]

# Event scopes and ids travel in NATS headers: no line breaks.
EventScope = Annotated[str, Meta(
    min_length=1, max_length=evt.MAX_SCOPE_CHARS, pattern=f"^{evt.HEADER_SAFE_PATTERN}$",
)]
EventId = Annotated[str, Meta(
    min_length=1, max_length=evt.MAX_EVENT_ID_CHARS, pattern=f"^{evt.HEADER_SAFE_PATTERN}$",
)]


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every error response: the status again, a message for people and, for some errors,
    details for programs (the invalid fields of a 400, the `field` of a 422, the position of
    a CEL error)."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[Any] | None = None


_ERRORS = {
    400: "The request does not fit the schema, or breaks a rule the message names",
    401: "Missing or unknown bearer token",
    403: "The token may not do this",
    404: "Not found (for this tenant)",
    409: "Conflicts with the current state",
    410: "Expired: it can no longer be used",
    413: "The request body is too large",
    422: "The run input does not fit the workflow's input_schema",
    429: "Too many requests",
    503: "A backing store is unavailable; retry later",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI error responses for `codes`, all with the ErrorBody schema."""
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_ERRORS[code],
                           generate_examples=False)
        for code in codes
    }


class RegisterResponse(msgspec.Struct, kw_only=True):
    id: str
    name: str
    hash: str
    created: bool  # a definition never registered before
    current: bool  # new runs start on this version (False: a known one, left as it was)


class VersionView(msgspec.Struct, kw_only=True):
    id: str
    hash: str
    created_at: str
    current: bool


class RollbackRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    version_id: Annotated[str, Meta(min_length=1)]


class WorkflowView(msgspec.Struct, kw_only=True):
    name: WorkflowName
    version_id: str
    spec: dict[str, Any]
    updated_at: str


class ParentRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Makes the run a child of a running task (the SDK sends it from inside a task).

    The child's run id derives from the task and `index` (its k-th spawn, counted from 0 in
    every attempt) or, when given, `key`: a retried task that spawns again gets the same run.
    """

    run_id: Annotated[str, Meta(min_length=1)]
    task_id: Annotated[str, Meta(min_length=1)]
    index: specs.NonNegative = 0
    key: Annotated[str, Meta(min_length=1, max_length=255)] | None = None


class RunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Any = None
    metadata: dict[str, str] = {}
    priority: Priority | None = None  # default: the workflow's default_priority
    version_id: str | None = None  # pin this run to a version; default: the current one
    parent: ParentRef | None = None  # start a child run of that task (docs/children.md)
    # POSTed the run's id, status and outputs when it ends, signed (docs/webhooks.md).
    callback_url: Annotated[str, Meta(min_length=8, max_length=2048,
                                      pattern=r"^https?://[!-~]+$")] | None = None
    # Within its TTL (seconds, default 24 h; "until_finished": until that run ends) a key seen
    # before answers the run it started, with deduplicated: true (docs/flow-control.md).
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    idempotency_ttl: Annotated[float, Meta(gt=0, le=366 * 24 * 3600)] | Literal[
        "until_finished"] | None = None


class BulkRunRequest(msgspec.Struct, kw_only=True):
    runs: Annotated[list[RunRequest], Meta(min_length=1, max_length=1000)]


class RunCreated(msgspec.Struct, kw_only=True):
    run_id: str
    workflow: str
    version_id: str
    deduplicated: bool = False  # an idempotency key answered an earlier trigger's run


class BulkRunCreated(msgspec.Struct, kw_only=True):
    run_ids: list[str]
    deduplicated: list[bool] = []  # per run, as RunCreated.deduplicated


class AttemptView(msgspec.Struct, kw_only=True):
    attempt: int
    status: Annotated[str, Meta(description="a task status, or LOST (its worker went away)")]
    worker_id: str | None
    error: dict[str, Any] | None
    started_at: str | None
    finished_at: str | None


class TaskView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    status: TaskStatus
    attempt: int
    output: Any = None
    worker_id: str | None = None
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: list[AttemptView] = []


class ChildView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    status: str
    parent_task: str | None
    created_at: str


class RunView(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    version_id: str
    status: RunStatus
    priority: int
    input: Any
    metadata: dict[str, str]
    created_at: str
    finished_at: str | None
    output: dict[str, Any]
    tasks: list[TaskView]
    errors: dict[str, dict[str, Any]] = {}
    # A child run's parent; a top-level run has none and depth 0.
    parent_run_id: str | None = None
    parent_task: str | None = None
    depth: int = 0
    # The run's own children: the first CHILDREN_SHOWN in spawn order, and how many in all
    # (GET /runs?parent_run_id= lists them).
    children: list[ChildView] = []
    children_count: int = 0
    # A fork (docs/interaction.md): the run it came from and where, and the runs forked from
    # this one (the first 100).
    forked_from: str | None = None
    from_task: str | None = None
    from_step: int | None = None
    forks: list[str] = []


MAX_RESULTS = 1000
MAX_WAIT_S = 60.0  # any long-poll (GET /runs/{id}, POST /runs/results)


class ResultsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run_ids: Annotated[list[str], Meta(min_length=1, max_length=MAX_RESULTS)]
    # Long-poll: wait up to this long until at least one of the runs has ended.
    wait_s: Annotated[float, Meta(ge=0, le=MAX_WAIT_S)] = 0.0


class RunResult(msgspec.Struct, kw_only=True):
    id: str
    status: str
    output: dict[str, Any]
    errors: dict[str, dict[str, Any]] = {}


class ResultsView(msgspec.Struct, kw_only=True):
    runs: list[RunResult]  # the runs that have ended; the others are still going (or unknown)


class RunSummary(msgspec.Struct, kw_only=True):
    id: str
    workflow: str
    status: RunStatus
    created_at: str
    finished_at: str | None
    parent_run_id: str | None = None


class RunEventView(msgspec.Struct, kw_only=True):
    seq: int
    kind: str
    task_name: str | None
    attempt: int | None
    detail: Any
    ts: str


class Accepted(msgspec.Struct, kw_only=True):
    run_id: str
    accepted: bool = True
