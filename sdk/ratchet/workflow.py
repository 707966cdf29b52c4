"""Workflow and task definitions: decorators validate at import time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar, cast

from ratchet import _codec
from ratchet._transport import Transport
from ratchet.context import Context, current_context
from ratchet.durable import DurableContext, Event, ParentOutput, Sleep, condition_spec
from ratchet.errors import RatchetError, WorkflowDefinitionError
from ratchet.resources import RunRef, Scheduled
from ratchet.types import Batch, Concurrency, Debounce, DesiredLabel, RateLimit, StickyStrategy

R = TypeVar("R")
TaskFn = Callable[[Any, Context], Any]
# A durable task's function takes the richer DurableContext (it is handed one).
DurableTaskFn = Callable[[Any, DurableContext], Any]
BULK_CHUNK = 1000  # runs per bulk request


def _seconds(value: timedelta | float | int | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


@dataclass(frozen=True, slots=True)
class TaskOptions:
    retries: int = 0
    backoff_factor: float = 2.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    execution_timeout: float = 300.0
    schedule_timeout: float = 300.0
    concurrency: tuple[Concurrency, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    desired_labels: tuple[tuple[str, DesiredLabel], ...] = ()
    durable: bool = False
    wait_for: tuple[Sleep | Event, ...] = ()
    skip_if: tuple[ParentOutput, ...] = ()
    cancel_if: tuple[ParentOutput, ...] = ()


class Task(Generic[R]):
    """A task function registered on a workflow. Calling it calls the function directly."""

    def __init__(
        self,
        workflow: Workflow,
        fn: TaskFn,
        name: str,
        parents: tuple[Task[Any], ...],
        options: TaskOptions,
        role: str = "task",
    ) -> None:
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 2:
            raise WorkflowDefinitionError(
                f"task {name!r} must take exactly (input, ctx); it takes {len(params)} parameters"
            )
        self.workflow = workflow
        self.fn = fn
        self.name = name
        self.parents = parents
        self.options = options
        self.role = role
        self.is_async = inspect.iscoroutinefunction(fn)
        if options.durable and not self.is_async:
            raise WorkflowDefinitionError(f"durable task {name!r} must be an async function")
        for cond in (*options.skip_if, *options.cancel_if):
            parent = cond.parent_name
            if parent and parent not in {p.name for p in parents}:
                raise WorkflowDefinitionError(
                    f"task {name!r}: ParentOutput names {parent!r}, which is not a parent"
                )
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    @property
    def action(self) -> str:
        return f"{self.workflow.name}:{self.name}"

    def __call__(self, input: Any, ctx: Context) -> Any:
        return self.fn(input, ctx)

    def spec(self) -> dict[str, Any]:
        o = self.options
        return {
            "name": self.name,
            "parents": [p.name for p in self.parents],
            "retries": o.retries,
            "backoff_factor": o.backoff_factor,
            "backoff_base_s": o.backoff_base,
            "backoff_max_s": o.backoff_max,
            "execution_timeout_s": o.execution_timeout,
            "schedule_timeout_s": o.schedule_timeout,
            "concurrency": [_concurrency_spec(c) for c in o.concurrency],
            "rate_limits": [_rate_limit_spec(r) for r in o.rate_limits],
            "desired_labels": {
                k: {"value": v.value, "required": v.required, "weight": v.weight}
                for k, v in o.desired_labels
            },
            "durable": o.durable,
            "wait_for": [condition_spec(c) for c in o.wait_for],
            "skip_if": [condition_spec(c) for c in o.skip_if],
            "cancel_if": [condition_spec(c) for c in o.cancel_if],
        }

    def mock_run(
        self,
        input: Any = None,
        parent_outputs: dict[str, Any] | None = None,
        *,
        attempt: int = 0,
        additional: dict[str, Any] | None = None,
    ) -> Any:
        """Run the function locally without a server, for unit tests.

        Works from plain code and from inside a running event loop (an async pytest test):
        there this call must still block, so an async task runs on a loop of its own in a
        worker thread. In async code, `await task.aio_mock_run(...)` runs it on the caller's
        loop instead.
        """
        result = self._mock_call(input, parent_outputs, attempt, additional)
        if not inspect.isawaitable(result):
            return result
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_await(result))
        context = contextvars.copy_context()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ratchet-mock") as pool:
            return pool.submit(context.run, asyncio.run, _await(result)).result()

    async def aio_mock_run(
        self,
        input: Any = None,
        parent_outputs: dict[str, Any] | None = None,
        *,
        attempt: int = 0,
        additional: dict[str, Any] | None = None,
    ) -> Any:
        """`mock_run` for async code: an async task runs on the caller's event loop."""
        result = self._mock_call(input, parent_outputs, attempt, additional)
        if inspect.isawaitable(result):
            return await result
        return result

    def _mock_call(
        self,
        input: Any,
        parent_outputs: dict[str, Any] | None,
        attempt: int,
        additional: dict[str, Any] | None,
    ) -> Any:
        """Call the function with a serverless context: its result, or the awaitable."""
        ctx = (DurableContext if self.options.durable else Context)(
            run_id="mock-run", task_id="mock-task", task_name=self.name,
            workflow=self.workflow.name, attempt=attempt,
            parent_outputs=dict(parent_outputs or {}), additional=additional,
        )
        value = _codec.convert(_codec.to_builtins(input) if input is not None else {}, self.workflow.input_type)
        return self.fn(value, ctx)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _concurrency_spec(c: Concurrency) -> dict[str, Any]:
    return {"key": c.key, "max_runs": c.max_runs, "strategy": str(c.strategy)}


def _rate_limit_spec(r: RateLimit) -> dict[str, Any]:
    out: dict[str, Any] = {"units": r.units}
    for name in ("key", "dynamic_key", "limit", "per"):
        value = getattr(r, name)
        if value is not None:
            out[name] = value
    return out


class Workflow:
    """A DAG of tasks. Create with `Ratchet.workflow(...)`, add tasks with `@wf.task()`.

    A definition needs no server: a `Workflow` built without a transport can be given tasks,
    mock-run and handed to a worker (which registers it). Only triggering runs from it needs
    the transport that `Ratchet.workflow` binds.
    """

    def __init__(
        self,
        name: str,
        *,
        transport: Transport | None = None,
        input: Any = None,
        description: str = "",
        on_events: list[str] | None = None,
        on_crons: list[str] | None = None,
        concurrency: Concurrency | list[Concurrency] | None = None,
        default_priority: int = 1,
        sticky: StickyStrategy | None = None,
        on_finish_webhook: str | None = None,
        debounce: Debounce | None = None,
        batch: Batch | None = None,
        idempotency_key: str | None = None,
        idempotency_ttl: timedelta | str | None = None,
    ) -> None:
        if not name or any(c.isspace() for c in name):
            raise WorkflowDefinitionError(f"invalid workflow name {name!r}")
        if default_priority not in (1, 2, 3):
            raise WorkflowDefinitionError("default_priority must be 1, 2 or 3")
        self.name = name
        self.input_type = input
        self.description = description
        self.on_events = list(on_events or [])
        self.on_crons = list(on_crons or [])
        if isinstance(concurrency, Concurrency):
            concurrency = [concurrency]
        self.concurrency = list(concurrency or [])
        self.default_priority = default_priority
        self.sticky = StickyStrategy(sticky) if sticky is not None else None
        # POSTed each run's id, status and outputs when it ends (docs/webhooks.md).
        self.on_finish_webhook = on_finish_webhook
        # Flow control (docs/flow-control.md); debounce with batch is refused by the server.
        self.debounce = debounce
        self.batch = batch
        self.idempotency_key = idempotency_key  # CEL: the key of triggers that bring none
        self.idempotency_ttl = idempotency_ttl
        self._flow_spec = self._flow()  # a bad duration or keep fails here, at import time
        self.tasks: dict[str, Task[Any]] = {}
        self.on_failure: Task[Any] | None = None
        self.on_success: Task[Any] | None = None
        # Set by `Ratchet.task`: the one task of a standalone-task workflow.
        self.standalone_task: Task[Any] | None = None
        self._transport = transport

    # definition ---------------------------------------------------------------------
    def task(
        self,
        name: str | None = None,
        *,
        parents: list[Task[Any]] | None = None,
        retries: int = 0,
        backoff_factor: float = 2.0,
        backoff_base: timedelta | float = 1.0,
        backoff_max: timedelta | float = 60.0,
        execution_timeout: timedelta | float = 300.0,
        schedule_timeout: timedelta | float = 300.0,
        concurrency: Concurrency | list[Concurrency] | None = None,
        rate_limits: list[RateLimit] | None = None,
        desired_labels: dict[str, DesiredLabel | str] | None = None,
        wait_for: list[Sleep | Event] | None = None,
        skip_if: list[ParentOutput] | None = None,
        cancel_if: list[ParentOutput] | None = None,
        durable: bool = False,
    ) -> Callable[[TaskFn], Task[Any]]:
        """Decorate a function `(input, ctx)` as a task of this workflow.

        `wait_for` (Sleep / Event conditions, all of which must hold), `skip_if` and
        `cancel_if` (ParentOutput conditions, any of which decides) are looked at when the
        task becomes ready; see docs/durable.md.
        """
        options = dataclasses.replace(
            self._options(
                retries, backoff_factor, backoff_base, backoff_max, execution_timeout,
                schedule_timeout, concurrency, rate_limits, desired_labels,
            ),
            durable=durable,
            wait_for=_conditions("wait_for", wait_for, (Sleep, Event)),
            skip_if=_conditions("skip_if", skip_if, (ParentOutput,)),
            cancel_if=_conditions("cancel_if", cancel_if, (ParentOutput,)),
        )
        parent_list = tuple(parents or ())

        def decorate(fn: TaskFn) -> Task[Any]:
            task_name = name or fn.__name__
            if task_name in self.tasks or task_name in self._hook_names():
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r} already has a task named {task_name!r}"
                )
            for parent in parent_list:
                if not isinstance(parent, Task) or parent.workflow is not self:
                    raise WorkflowDefinitionError(
                        f"task {task_name!r}: parents must be tasks of workflow {self.name!r}"
                    )
                if parent.role != "task":
                    raise WorkflowDefinitionError("on_failure/on_success tasks cannot be parents")
            task: Task[Any] = Task(self, fn, task_name, parent_list, options)
            self.tasks[task_name] = task
            return task

        return decorate

    def durable_task(
        self, name: str | None = None, **kw: Any
    ) -> Callable[[DurableTaskFn], Task[Any]]:
        """A durable task: an async function `(input, ctx: DurableContext)` whose sleeps and
        event waits are logged, survive restarts and hold no worker slot. Takes the options
        of `task()`."""
        return cast("Callable[[DurableTaskFn], Task[Any]]", self.task(name, durable=True, **kw))

    def on_failure_task(self, name: str | None = None, **kw: Any) -> Callable[[TaskFn], Task[Any]]:
        """A task that runs once when any task of the run failed."""
        return self._hook("on_failure", name, kw)

    def on_success_task(self, name: str | None = None, **kw: Any) -> Callable[[TaskFn], Task[Any]]:
        """A task that runs once when every task of the run succeeded."""
        return self._hook("on_success", name, kw)

    def _hook(self, role: str, name: str | None, kw: dict[str, Any]) -> Callable[[TaskFn], Task[Any]]:
        options = self._options(
            kw.get("retries", 0), kw.get("backoff_factor", 2.0), kw.get("backoff_base", 1.0),
            kw.get("backoff_max", 60.0), kw.get("execution_timeout", 300.0),
            kw.get("schedule_timeout", 300.0), None, None, None,
        )

        def decorate(fn: TaskFn) -> Task[Any]:
            task_name = name or fn.__name__
            if task_name in self.tasks or task_name in self._hook_names():
                raise WorkflowDefinitionError(f"duplicate task name {task_name!r}")
            task: Task[Any] = Task(self, fn, task_name, (), options, role=role)
            setattr(self, role, task)
            return task

        return decorate

    def _hook_names(self) -> set[str]:
        return {t.name for t in (self.on_failure, self.on_success) if t is not None}

    @staticmethod
    def _options(
        retries: int, backoff_factor: float, backoff_base: timedelta | float,
        backoff_max: timedelta | float, execution_timeout: timedelta | float,
        schedule_timeout: timedelta | float, concurrency: Concurrency | list[Concurrency] | None,
        rate_limits: list[RateLimit] | None, desired_labels: dict[str, DesiredLabel | str] | None,
    ) -> TaskOptions:
        if retries < 0:
            raise WorkflowDefinitionError("retries must be >= 0")
        if isinstance(concurrency, Concurrency):
            concurrency = [concurrency]
        for c in concurrency or ():
            if c.max_runs < 1:
                raise WorkflowDefinitionError("concurrency max_runs must be >= 1")
        for rl in rate_limits or ():
            if (rl.key is None) == (rl.dynamic_key is None):
                raise WorkflowDefinitionError("a RateLimit needs exactly one of key or dynamic_key")
        labels = tuple(
            (k, v if isinstance(v, DesiredLabel) else DesiredLabel(value=str(v)))
            for k, v in (desired_labels or {}).items()
        )
        opts = TaskOptions(
            retries=retries,
            backoff_factor=float(backoff_factor),
            backoff_base=_seconds(backoff_base, 1.0),
            backoff_max=_seconds(backoff_max, 60.0),
            execution_timeout=_seconds(execution_timeout, 300.0),
            schedule_timeout=_seconds(schedule_timeout, 300.0),
            concurrency=tuple(concurrency or ()),
            rate_limits=tuple(rate_limits or ()),
            desired_labels=labels,
        )
        if opts.execution_timeout <= 0 or opts.schedule_timeout <= 0:
            raise WorkflowDefinitionError("timeouts must be positive")
        return opts

    def all_tasks(self) -> list[Task[Any]]:
        hooks = [t for t in (self.on_failure, self.on_success) if t is not None]
        return [*self.tasks.values(), *hooks]

    def spec(self) -> dict[str, Any]:
        """The JSON definition registered with the API."""
        if not self.tasks:
            raise WorkflowDefinitionError(f"workflow {self.name!r} has no tasks")
        return {
            "name": self.name,
            "description": self.description,
            "tasks": [t.spec() for t in self.tasks.values()],
            "on_events": self.on_events,
            "on_crons": self.on_crons,
            "concurrency": [_concurrency_spec(c) for c in self.concurrency],
            "on_failure": self.on_failure.spec() if self.on_failure else None,
            "on_success": self.on_success.spec() if self.on_success else None,
            "input_schema": _codec.json_schema(self.input_type),
            "default_priority": self.default_priority,
            "sticky": str(self.sticky) if self.sticky else None,
            **({"on_finish_webhook": self.on_finish_webhook} if self.on_finish_webhook else {}),
            **self._flow_spec,
        }

    def _flow(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            if self.debounce is not None:
                out["debounce"] = self.debounce.spec()
            if self.batch is not None:
                out["batch"] = self.batch.spec()
        except ValueError as exc:
            raise WorkflowDefinitionError(f"workflow {self.name!r}: {exc}") from None
        if self.idempotency_key is not None:
            rule: dict[str, Any] = {"key": self.idempotency_key}
            ttl = _ttl(self.idempotency_ttl)
            if ttl == "until_finished":
                rule["until_finished"] = True
            elif ttl is not None:
                rule["ttl_s"] = ttl
            out["idempotency"] = rule
        return out

    # running ------------------------------------------------------------------------
    def _bound(self) -> Transport:
        if self._transport is None:
            raise RatchetError(
                f"workflow {self.name!r} is not bound to a server; create it with "
                "Ratchet(...).workflow() to trigger runs from it"
            )
        return self._transport

    def run(self, input: Any = None, *, priority: int | None = None,
            metadata: dict[str, str] | None = None, version_id: str | None = None,
            timeout_s: float = 3600.0, key: str | None = None,
            idempotency_key: str | None = None,
            idempotency_ttl: timedelta | str | None = None) -> dict[str, Any]:
        """Trigger a run and wait for it: `{task_name: output}`; raises RunFailed.

        Inside a task this starts a child run of the task's run (see `run_no_wait`). The
        waiting task keeps its worker slot; a sync task keeps its thread too.
        """
        ref = self.run_no_wait(input, priority=priority, metadata=metadata,
                               version_id=version_id, key=key,
                               idempotency_key=idempotency_key, idempotency_ttl=idempotency_ttl)
        return ref.result(timeout_s)

    def run_no_wait(self, input: Any = None, *, priority: int | None = None,
                    metadata: dict[str, str] | None = None,
                    version_id: str | None = None, key: str | None = None,
                    idempotency_key: str | None = None,
                    idempotency_ttl: timedelta | str | None = None,
                    callback_url: str | None = None) -> RunRef:
        """Trigger a run. `version_id` pins it to that registered version of the workflow
        (see `r.workflows.versions`); without it the run uses the current version.

        Called inside a task, the run is a child of the task's run: linked to it, cancelled
        with it, and started once however often the task is retried — the k-th child a task
        starts (or the one with the same `key`) is the same run in every attempt.

        With `idempotency_key`, a trigger whose key was seen within `idempotency_ttl` (default
        24 h; `"until_finished"`: until that run ends) starts nothing and answers the earlier
        run (`ref.deduplicated` is True). A debounced or batched workflow answers the run of
        the trigger's window or batch.

        With `callback_url`, the run's id, status and outputs are POSTed there (signed,
        retried) when it ends (docs/webhooks.md).
        """
        transport = self._bound()
        # A pinned run names a version the server already has; registering this definition
        # first could make it current again and undo a rollback.
        if version_id is None:
            transport.register(self.spec())
        body = _run_body(input, priority, metadata, version_id, _parents([key])[0])
        if callback_url is not None:
            body["callback_url"] = callback_url
        _idempotency(body, idempotency_key, idempotency_ttl)
        out = transport.request("POST", f"/workflows/{self.name}/run", json=body)
        return RunRef(transport, out["run_id"], deduplicated=out.get("deduplicated", False))

    async def aio_run(self, input: Any = None, *, priority: int | None = None,
                      metadata: dict[str, str] | None = None, version_id: str | None = None,
                      timeout_s: float = 3600.0, key: str | None = None,
                      idempotency_key: str | None = None,
                      idempotency_ttl: timedelta | str | None = None) -> dict[str, Any]:
        """`run` for async code: trigger a run (a child run inside a task) and await it."""
        ref = await self.aio_run_no_wait(input, priority=priority, metadata=metadata,
                                         version_id=version_id, key=key,
                                         idempotency_key=idempotency_key,
                                         idempotency_ttl=idempotency_ttl)
        return await ref.aio_result(timeout_s)

    async def aio_run_no_wait(self, input: Any = None, *, priority: int | None = None,
                              metadata: dict[str, str] | None = None,
                              version_id: str | None = None, key: str | None = None,
                              idempotency_key: str | None = None,
                              idempotency_ttl: timedelta | str | None = None,
                              callback_url: str | None = None) -> RunRef:
        """`run_no_wait` for async code."""
        transport = self._bound()
        if version_id is None:
            await transport.aregister(self.spec())
        body = _run_body(input, priority, metadata, version_id, _parents([key])[0])
        if callback_url is not None:
            body["callback_url"] = callback_url
        _idempotency(body, idempotency_key, idempotency_ttl)
        out = await transport.arequest("POST", f"/workflows/{self.name}/run", json=body)
        return RunRef(transport, out["run_id"], deduplicated=out.get("deduplicated", False))

    def run_many(self, inputs: list[Any], *, priority: int | None = None,
                 version_id: str | None = None,
                 keys: list[str | None] | None = None,
                 idempotency_keys: list[str | None] | None = None,
                 idempotency_ttl: timedelta | str | None = None) -> list[RunRef]:
        """Trigger many runs in bulk requests of up to 1,000 (child runs inside a task;
        `keys`, one per input, name them like `run_no_wait`'s `key`)."""
        transport = self._bound()
        if version_id is None:
            transport.register(self.spec())
        refs: list[RunRef] = []
        for path, body in self._bulk_bodies(inputs, priority, version_id, keys,
                                            idempotency_keys, idempotency_ttl):
            out = transport.request("POST", path, json=body)
            refs.extend(_refs(transport, out))
        return refs

    async def aio_run_many(self, inputs: list[Any], *, priority: int | None = None,
                           version_id: str | None = None,
                           keys: list[str | None] | None = None,
                           idempotency_keys: list[str | None] | None = None,
                           idempotency_ttl: timedelta | str | None = None) -> list[RunRef]:
        """`run_many` for async code: a list of `RunRef`, in the order of `inputs`."""
        transport = self._bound()
        if version_id is None:
            await transport.aregister(self.spec())
        refs: list[RunRef] = []
        for path, body in self._bulk_bodies(inputs, priority, version_id, keys,
                                            idempotency_keys, idempotency_ttl):
            out = await transport.arequest("POST", path, json=body)
            refs.extend(_refs(transport, out))
        return refs

    def _bulk_bodies(
        self, inputs: list[Any], priority: int | None, version_id: str | None,
        keys: list[str | None] | None,
        idempotency_keys: list[str | None] | None = None,
        idempotency_ttl: timedelta | str | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        if keys is not None and len(keys) != len(inputs):
            raise ValueError(f"keys has {len(keys)} items for {len(inputs)} inputs")
        if idempotency_keys is not None and len(idempotency_keys) != len(inputs):
            raise ValueError(
                f"idempotency_keys has {len(idempotency_keys)} items for {len(inputs)} inputs")
        parents = _parents(keys if keys is not None else [None] * len(inputs))
        ikeys = idempotency_keys if idempotency_keys is not None else [None] * len(inputs)
        path = f"/workflows/{self.name}/run/bulk"
        return [
            (path, {"runs": [
                _idempotency(_run_body(x, priority, None, version_id, parents[i + j]),
                             ikeys[i + j], idempotency_ttl)
                for j, x in enumerate(inputs[i : i + BULK_CHUNK])
            ]})
            for i in range(0, len(inputs), BULK_CHUNK)
        ]

    def schedule(self, run_at: datetime, input: Any = None, **kw: Any) -> Any:
        """Run once at `run_at` (timezone-aware)."""
        transport = self._bound()
        transport.register(self.spec())
        return Scheduled(transport).create(workflow=self.name, run_at=run_at, input=input, **kw)


def _conditions(where: str, items: list[Any] | None, kinds: tuple[type, ...]) -> tuple[Any, ...]:
    for item in items or ():
        if not isinstance(item, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise WorkflowDefinitionError(f"{where} takes {names} conditions, not {item!r}")
        if isinstance(item, Sleep):
            _ = item.seconds  # a negative duration fails here, at import time
    return tuple(items or ())


def _parents(keys: list[str | None]) -> list[dict[str, Any] | None]:
    """Inside a task, what makes each of these runs a child of it: the task and the spawn
    index (plus the key, if any). Outside a task, runs are top-level and take no key."""
    ctx = current_context()
    if ctx is None:
        if any(k is not None for k in keys):
            raise RatchetError("key= names a child run: it works only inside a running task")
        return [None] * len(keys)
    first = ctx._reserve_spawns(len(keys))
    out: list[dict[str, Any] | None] = []
    for i, key in enumerate(keys):
        parent: dict[str, Any] = {"run_id": ctx.run_id, "task_id": ctx.task_id, "index": first + i}
        if key is not None:
            parent["key"] = key
        out.append(parent)
    return out


def _run_body(input: Any, priority: int | None, metadata: dict[str, str] | None,
              version_id: str | None, parent: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of one run trigger (single or bulk)."""
    body: dict[str, Any] = {"input": _codec.to_builtins(input) if input is not None else {}}
    if parent is not None:
        body["parent"] = parent
    if priority is not None:
        body["priority"] = priority
    if metadata:
        body["metadata"] = metadata
    if version_id is not None:
        body["version_id"] = version_id
    return body


def _ttl(ttl: timedelta | str | float | None) -> float | str | None:
    if ttl is None or isinstance(ttl, str):
        if ttl in (None, "until_finished"):
            return ttl
        raise WorkflowDefinitionError(f"idempotency_ttl must be a timedelta or 'until_finished', not {ttl!r}")
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if seconds <= 0:
        raise WorkflowDefinitionError("idempotency_ttl must be positive")
    return seconds


def _idempotency(body: dict[str, Any], key: str | None,
                 ttl: timedelta | str | None) -> dict[str, Any]:
    """Add a trigger's idempotency key (and TTL) to its request body."""
    if key is not None:
        body["idempotency_key"] = key
        value = _ttl(ttl)
        if value is not None:
            body["idempotency_ttl"] = value
    return body


def _refs(transport: Transport, out: dict[str, Any]) -> list[RunRef]:
    dedup = out.get("deduplicated") or [False] * len(out["run_ids"])
    return [RunRef(transport, rid, deduplicated=d) for rid, d in zip(out["run_ids"], dedup, strict=True)]
