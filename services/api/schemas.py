"""Request and response bodies of the REST API (msgspec Structs → OpenAPI at /schema)."""

from __future__ import annotations

from typing import Any

import msgspec


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
    version_id: str


class WorkflowView(msgspec.Struct, kw_only=True):
    name: str
    version_id: str
    spec: dict[str, Any]
    updated_at: str


class ParentRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Makes the run a child of a running task (the SDK sends it from inside a task).

    The child's run id derives from the task and `index` (its k-th spawn, counted from 0 in
    every attempt) or, when given, `key`: a retried task that spawns again gets the same run.
    """

    run_id: str
    task_id: str
    index: int = 0
    key: str | None = None


class RunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: Any = None
    metadata: dict[str, str] = {}
    priority: int | None = None
    version_id: str | None = None  # pin this run to a version; default: the current one
    parent: ParentRef | None = None  # start a child run of that task (docs/children.md)


class BulkRunRequest(msgspec.Struct, kw_only=True):
    runs: list[RunRequest]


class RunCreated(msgspec.Struct, kw_only=True):
    run_id: str
    workflow: str
    version_id: str


class BulkRunCreated(msgspec.Struct, kw_only=True):
    run_ids: list[str]


class AttemptView(msgspec.Struct, kw_only=True):
    attempt: int
    status: str
    worker_id: str | None
    error: dict[str, Any] | None
    started_at: str | None
    finished_at: str | None


class TaskView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    status: str
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
    status: str
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


class ResultsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    run_ids: list[str]
    wait_s: float = 0.0  # long-poll: until at least one of the runs has ended


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
    status: str
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
