"""Workflow definitions as registered through the API (JSON), and their validation."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from libs.common.cel import MAX_EXPRESSION_CHARS
from libs.common.cronexpr import on_crons_problem
from libs.common.events import KEY_PATTERN as EVENT_KEY_PATTERN
from libs.common.events import MAX_KEY_CHARS as MAX_EVENT_KEY_CHARS

Priority = Literal[1, 2, 3]

# The constraints below are the ones `validate` enforces that one field can state on its own,
# so the API's OpenAPI schema shows them (the cross-field rules stay in `validate`). Stored
# specs all passed `validate`, so decoding them with these constraints cannot fail.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=NAME_PATTERN,
                           description="letters, digits, '_', '-', '.', ':'")]
# A CEL expression: the API compiles it (400 with the position when it does not).
Cel = Annotated[str, Meta(min_length=1, pattern=r"\S", extra_json_schema={"extra": {"format": "cel"}})]
Cron = Annotated[str, Meta(extra_json_schema={"extra": {"format": "cron"}},
                           description="5 fields, or 6 with seconds first (UTC)")]
# Counts end up in PostgreSQL `integer` columns (units, max_runs, limits), hence the cap;
# durations end up as deadlines, which a year bounds well clear of any overflow.
INT32_MAX = 2**31 - 1
MAX_DURATION_S = 366 * 24 * 3600
Positive = Annotated[int, Meta(ge=1, le=INT32_MAX)]
NonNegative = Annotated[int, Meta(ge=0, le=INT32_MAX)]
Duration = Annotated[float, Meta(gt=0, le=MAX_DURATION_S)]
LabelName = Annotated[str, Meta(min_length=1)]


def _json_schema(tp: object) -> dict[str, Any]:
    """msgspec's JSON schema of `tp`, with the OpenAPI-only `extra` keys folded in."""
    out: dict[str, Any] = msgspec.json.schema(tp)
    out.update(out.pop("extra", {}))
    return out


def _openapi(**schema: Any) -> Meta:
    # Litestar's schema builder drops constraints nested inside list items, dict keys and
    # unions; this restates them for the OpenAPI document (msgspec still enforces the inner
    # ones when it decodes).
    return Meta(extra_json_schema={"extra": schema})


Names = Annotated[list[Name], _openapi(items=_json_schema(Name))]
Crons = Annotated[list[Cron], _openapi(items=_json_schema(Cron))]
Units = Annotated[NonNegative | Cel, _openapi(
    one_of=[_json_schema(NonNegative), _json_schema(Cel)],
    description="units taken per start: an int, or CEL over the input giving one",
)]


class ConcurrencySpec(msgspec.Struct, frozen=True, kw_only=True):
    key: Cel
    max_runs: Positive = 1
    strategy: Literal["GROUP_ROUND_ROBIN", "CANCEL_IN_PROGRESS", "CANCEL_NEWEST"] = (
        "GROUP_ROUND_ROBIN"
    )


class RateLimitSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Units a task takes from a rate limit when it starts.

    `key` names a static limit created through the API; `dynamic_key` is CEL over the input
    (and metadata) giving the key per run, with `limit`/`per` declared here (or left out to
    use a static limit of that name). `units` is an int or CEL yielding one.
    """

    key: str | None = None
    dynamic_key: Cel | None = None
    units: Units = 1
    limit: Positive | None = None
    per: Literal["second", "minute", "hour"] | None = None


class LabelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A worker label a task wants: required (else never placed) or preferred by weight."""

    value: str
    required: bool = False
    weight: NonNegative = 1


class _Condition(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    """A DAG task's condition (see docs/durable.md); the JSON `kind` tags which one."""

    @property
    def kind(self) -> str:
        return str(type(self).__struct_config__.tag)


class SleepCondition(_Condition, frozen=True, kw_only=True, tag="sleep"):
    """Holds `sleep_s` after the task became ready."""

    sleep_s: Annotated[float, Meta(ge=0, le=MAX_DURATION_S)] = 0.0


class EventCondition(_Condition, frozen=True, kw_only=True, tag="event"):
    """Holds once an event `key` (in `scope`) arrives whose payload passes `expression`."""

    key: Annotated[str, Meta(min_length=1, max_length=MAX_EVENT_KEY_CHARS,
                             pattern=f"^{EVENT_KEY_PATTERN}$")]
    # Empty: any payload; otherwise CEL over the event payload (`input`), as filters.
    expression: Annotated[str, Meta(
        max_length=MAX_EXPRESSION_CHARS, extra_json_schema={"extra": {"format": "cel"}},
    )] = ""
    scope: Annotated[str, Meta(min_length=1, max_length=MAX_EVENT_KEY_CHARS)] | None = None


class ParentOutputCondition(_Condition, frozen=True, kw_only=True, tag="parent_output"):
    """CEL over the parents' outputs, evaluated when the task becomes ready."""

    expression: Cel
    parent: str = ""  # the parent whose output is `input` ("" = see docs/durable.md)


ConditionSpec = SleepCondition | EventCondition | ParentOutputCondition


class DebounceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Triggers with one `key` (CEL over input and metadata; empty: one key for all) start
    one run, `period_s` after the last of them or `max_wait_s` after the first, whichever
    comes first; the run's input is the last trigger's (`keep="last"`) or
    `{"items": [...]}` of all of them in arrival order (`keep="all"`)."""

    key: Annotated[str, Meta(max_length=MAX_EXPRESSION_CHARS,
                             extra_json_schema={"extra": {"format": "cel"}})] = ""
    period_s: Duration
    max_wait_s: Duration
    keep: Literal["last", "all"] = "last"


class BatchSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Triggers with one `key` collect into one run with input `{"items": [...]}` once
    `size` arrived or `max_wait_s` after the first, whichever comes first."""

    key: Annotated[str, Meta(max_length=MAX_EXPRESSION_CHARS,
                             extra_json_schema={"extra": {"format": "cel"}})] = ""
    size: Annotated[int, Meta(ge=1, le=10_000)]
    max_wait_s: Duration


class IdempotencySpec(msgspec.Struct, frozen=True, kw_only=True):
    """The idempotency key of every trigger that brings none itself (CEL over input and
    metadata), kept `ttl_s` or, with `until_finished`, until the run it names ends."""

    key: Cel
    ttl_s: Duration = 24 * 3600.0
    until_finished: bool = False


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: Name
    parents: Names = []
    retries: NonNegative = 0
    backoff_factor: float = 2.0
    backoff_base_s: float = 1.0
    backoff_max_s: Annotated[float, Meta(le=MAX_DURATION_S)] = 60.0
    execution_timeout_s: Duration = 300.0
    schedule_timeout_s: Duration = 300.0
    concurrency: list[ConcurrencySpec] = []
    rate_limits: list[RateLimitSpec] = []
    desired_labels: Annotated[
        dict[LabelName, LabelSpec], _openapi(property_names=_json_schema(LabelName))
    ] = {}
    durable: bool = False  # a durable task: its waits are logged and hold no regular slot
    wait_for: list[SleepCondition | EventCondition] = []  # all must hold before the task starts
    # Any holding when the task is ready: it ends SKIPPED / CANCELLED.
    skip_if: list[ParentOutputCondition] = []
    cancel_if: list[ParentOutputCondition] = []


class WorkflowSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow definition: a DAG of tasks.

    Besides each field's own constraints: task names are unique; `parents` name tasks of this
    workflow and form no cycle; `on_failure` / `on_success` take no parents and no task's name;
    a rate limit has exactly one of `key` (a limit created with PUT /rate-limits/{key}, given
    without `limit`/`per`) and `dynamic_key`; `limit` and `per` come together; a ParentOutput
    condition's `parent` is empty or one of its task's parents.
    """

    name: Name
    # minItems is stated to the schema only: `validate` says "has no tasks" more plainly
    # than the decoder would.
    tasks: Annotated[list[TaskSpec], Meta(extra_json_schema={"extra": {"min_items": 1}})]
    description: str = ""
    on_events: list[str] = []
    on_crons: Crons = []
    concurrency: list[ConcurrencySpec] = []
    on_failure: TaskSpec | None = None
    on_success: TaskSpec | None = None
    input_schema: dict[str, object] | None = None
    default_priority: Annotated[int, Meta(ge=1, le=3)] = 1
    sticky: Literal["SOFT", "HARD"] | None = None
    # POSTed every run's id, status and outputs when it ends, signed (docs/webhooks.md).
    on_finish_webhook: Annotated[
        str, Meta(max_length=2048, pattern=r"^https?://[!-~]+$")] | None = None
    # Flow control (docs/flow-control.md): at most one of debounce and batch.
    debounce: DebounceSpec | None = None
    batch: BatchSpec | None = None
    idempotency: IdempotencySpec | None = None


class SpecError(ValueError):
    """A workflow definition that cannot be registered; the message says why."""


NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:")


def _check_name(kind: str, name: str) -> None:
    if not name or len(name) > 128 or not set(name) <= NAME_CHARS:
        raise SpecError(
            f"{kind} name {name!r} must be 1-128 characters of letters, digits, '_', '-', '.', ':'"
        )


def validate(spec: WorkflowSpec) -> list[str]:
    """Check a workflow spec; return its task names in a topological order.

    Raises SpecError on an empty DAG, a bad or duplicate name, an unknown parent or a cycle.
    """
    _check_name("workflow", spec.name)
    if not spec.tasks:
        raise SpecError(f"workflow {spec.name!r} has no tasks")
    if not 1 <= spec.default_priority <= 3:
        raise SpecError("default_priority must be 1, 2 or 3")
    if cron_problem := on_crons_problem(spec.on_crons):
        raise SpecError(f"workflow {spec.name!r}: {cron_problem}")
    _check_concurrency(f"workflow {spec.name!r}", spec.concurrency)
    _check_flow(spec)
    by_name: dict[str, TaskSpec] = {}
    for task in spec.tasks:
        _check_name("task", task.name)
        if task.name in by_name:
            raise SpecError(f"duplicate task name {task.name!r}")
        if task.retries < 0:
            raise SpecError(f"task {task.name!r}: retries must be >= 0")
        if task.execution_timeout_s <= 0 or task.schedule_timeout_s <= 0:
            raise SpecError(f"task {task.name!r}: timeouts must be positive")
        _check_fairness(f"task {task.name!r}", task)
        by_name[task.name] = task
    for extra in (spec.on_failure, spec.on_success):
        if extra is not None:
            _check_name("task", extra.name)
            if extra.name in by_name:
                raise SpecError(f"on_failure/on_success task {extra.name!r} clashes with a task")
            if extra.parents:
                raise SpecError(f"task {extra.name!r}: on_failure/on_success take no parents")
    for task in spec.tasks:
        for c in (*task.skip_if, *task.cancel_if):
            if c.parent and c.parent not in task.parents:
                raise SpecError(f"task {task.name!r}: ParentOutput names {c.parent!r}, not a parent")
        for parent in task.parents:
            if parent not in by_name:
                raise SpecError(f"task {task.name!r} has unknown parent {parent!r}")
            if parent == task.name:
                raise SpecError(f"task {task.name!r} lists itself as a parent: cycle")
    return _toposort(spec.tasks)


def _check_concurrency(where: str, items: list[ConcurrencySpec]) -> None:
    for c in items:
        if not c.key.strip():
            raise SpecError(f"{where}: concurrency key expression is empty")
        if c.max_runs < 1:
            raise SpecError(f"{where}: concurrency max_runs must be >= 1")


def _check_flow(spec: WorkflowSpec) -> None:
    where = f"workflow {spec.name!r}"
    if spec.debounce is not None and spec.batch is not None:
        raise SpecError(
            f"{where}: debounce and batch cannot both be set (a debounced trigger starts the "
            "run of its window, a batched one the run of its batch; choose one)"
        )


def _check_fairness(where: str, task: TaskSpec) -> None:
    """Shape checks; CEL syntax and static key existence are checked by the API."""
    _check_concurrency(where, task.concurrency)
    for rl in task.rate_limits:
        if (rl.key is None) == (rl.dynamic_key is None):
            raise SpecError(f"{where}: a rate limit needs exactly one of key or dynamic_key")
        if isinstance(rl.units, int) and rl.units < 0:
            raise SpecError(f"{where}: rate limit units must be >= 0")
        if (rl.limit is None) != (rl.per is None):
            raise SpecError(f"{where}: an inline rate limit needs both limit and per")
        if rl.limit is not None and rl.limit < 1:
            raise SpecError(f"{where}: rate limit limit must be >= 1")
        if rl.key is not None and rl.limit is not None:
            raise SpecError(
                f"{where}: static rate limit {rl.key!r} is defined through the API, not inline"
            )
    for label, want in task.desired_labels.items():
        if not label or want.weight < 0:
            raise SpecError(f"{where}: desired label {label!r} needs a name and a weight >= 0")
    # Conditions are checked by their types (kinds per list, bounds, keys) when decoded.


def cel_expressions(spec: WorkflowSpec) -> list[tuple[str, str]]:
    """(where, expression) for every CEL expression in the spec, for the API to compile."""
    out = [(f"workflow {spec.name!r} concurrency key", c.key) for c in spec.concurrency]
    for label, rule in (("debounce", spec.debounce), ("batch", spec.batch),
                        ("idempotency", spec.idempotency)):
        if rule is not None and rule.key.strip():
            out.append((f"workflow {spec.name!r} {label} key", rule.key))
    tasks = [*spec.tasks, *(t for t in (spec.on_failure, spec.on_success) if t is not None)]
    for task in tasks:
        out.extend((f"task {task.name!r} concurrency key", c.key) for c in task.concurrency)
        for rl in task.rate_limits:
            if rl.dynamic_key is not None:
                out.append((f"task {task.name!r} rate limit dynamic_key", rl.dynamic_key))
            if isinstance(rl.units, str):
                out.append((f"task {task.name!r} rate limit units", rl.units))
        for c in (*task.wait_for, *task.skip_if, *task.cancel_if):
            if not isinstance(c, SleepCondition) and c.expression:
                out.append((f"task {task.name!r} {c.kind} condition", c.expression))
    return out


def static_rate_limit_keys(spec: WorkflowSpec) -> set[str]:
    tasks = [*spec.tasks, *(t for t in (spec.on_failure, spec.on_success) if t is not None)]
    return {rl.key for t in tasks for rl in t.rate_limits if rl.key is not None}


def _toposort(tasks: list[TaskSpec]) -> list[str]:
    indegree = {t.name: len(set(t.parents)) for t in tasks}
    children: dict[str, list[str]] = {t.name: [] for t in tasks}
    for t in tasks:
        for p in set(t.parents):
            children[p].append(t.name)
    ready = [name for name, d in indegree.items() if d == 0]
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for child in children[name]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if len(order) != len(tasks):
        stuck = sorted(n for n, d in indegree.items() if d > 0)
        raise SpecError(f"cycle among tasks {stuck}")
    return order


def content_hash(spec: WorkflowSpec) -> str:
    """Stable hash of a definition: identical code registers as the same version."""
    return hashlib.sha256(msgspec.json.encode(spec, order="sorted")).hexdigest()[:32]
