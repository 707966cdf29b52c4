"""`Ratchet`: the entry point — define workflows, trigger and inspect runs, start workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, cast

from ratchet._output import DEFAULT_LOG_MAX_CHARS, DEFAULT_LOG_MAX_LINES
from ratchet._transport import Transport
from ratchet.config import ClientConfig
from ratchet.resources import (
    Crons,
    Events,
    Filters,
    RateLimits,
    Runs,
    Scheduled,
    Waitpoints,
    Workflows,
)
from ratchet.types import Batch, Concurrency, Debounce, StickyStrategy
from ratchet.webhooks import Alerts, Webhooks
from ratchet.worker import Worker
from ratchet.workflow import DurableTaskFn, Task, TaskFn, Workflow


class Ratchet:
    """Client for one tenant. Reads RATCHET_TOKEN, RATCHET_API_URL, RATCHET_GRPC_ADDR.

    `grpc_addr` may list several dispatchers (`"a:7077,b:7077"` or a list): workers fail
    over between them.
    """

    def __init__(
        self,
        token: str | None = None,
        api_url: str | None = None,
        grpc_addr: str | Sequence[str] | None = None,
        *,
        timeout_s: float = 75.0,
    ) -> None:
        self._transport = Transport(ClientConfig.resolve(token, api_url, grpc_addr),
                                    timeout_s=timeout_s)
        self.runs = Runs(self._transport)
        self.waitpoints = Waitpoints(self._transport)
        self.events = Events(self._transport)
        self.filters = Filters(self._transport)
        self.crons = Crons(self._transport)
        self.scheduled = Scheduled(self._transport)
        self.rate_limits = RateLimits(self._transport)
        self.workflows = Workflows(self._transport)
        self.webhooks = Webhooks(self._transport)
        self.alerts = Alerts(self._transport)

    @property
    def config(self) -> ClientConfig:
        """The token and addresses this client uses."""
        return self._transport.config

    # definitions ---------------------------------------------------------------------
    def workflow(
        self,
        name: str,
        *,
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
    ) -> Workflow:
        return Workflow(
            name, transport=self._transport, input=input, description=description,
            on_events=on_events, on_crons=on_crons, concurrency=concurrency, default_priority=default_priority,
            sticky=sticky, on_finish_webhook=on_finish_webhook, debounce=debounce, batch=batch,
            idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl,
        )

    def task(
        self, name: str | None = None, *, input: Any = None, on_events: list[str] | None = None,
        on_crons: list[str] | None = None, concurrency: Concurrency | list[Concurrency] | None = None,
        **task_options: Any,
    ) -> Callable[[TaskFn], Workflow]:
        """A standalone task: a one-task workflow named after the task."""

        def decorate(fn: TaskFn) -> Workflow:
            wf_name = name or fn.__name__
            wf = self.workflow(wf_name, input=input, on_events=on_events, on_crons=on_crons,
                               concurrency=concurrency)
            task: Task[Any] = wf.task(name=wf_name, **task_options)(fn)
            wf.standalone_task = task
            return wf

        return decorate

    def durable_task(
        self, name: str | None = None, **options: Any,
    ) -> Callable[[DurableTaskFn], Workflow]:
        """A standalone durable task (see `Workflow.durable_task`)."""
        return cast("Callable[[DurableTaskFn], Workflow]", self.task(name, durable=True, **options))

    def worker(
        self,
        name: str,
        workflows: list[Workflow],
        slots: int = 10,
        labels: dict[str, str] | None = None,
        *,
        durable_slots: int = 1000,
        capture_logging: bool = False,
        log_max_lines: int = DEFAULT_LOG_MAX_LINES,
        log_max_chars: int = DEFAULT_LOG_MAX_CHARS,
    ) -> Worker:
        """A worker for `workflows`. With `capture_logging=True`, Python `logging` records
        emitted inside a task (at or above their logger's level) also go to the task's log.
        `log_max_lines` / `log_max_chars` cap each attempt's log (a marker line ends it).
        `durable_slots` bounds the durable tasks waiting at once without a slot."""
        return Worker(
            self._transport, name, workflows, slots=slots, labels=labels or {},
            durable_slots=durable_slots, capture_logging=capture_logging,
            log_max_lines=log_max_lines, log_max_chars=log_max_chars,
        )

    # HTTP -------------------------------------------------------------------------
    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        """Call any REST endpoint of the API as this tenant; the decoded JSON body."""
        return self._transport.request(method, path, json=json, params=params)

    async def arequest(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        return await self._transport.arequest(method, path, json=json, params=params)

    def register(self, *workflows: Workflow) -> None:
        """Register workflow definitions now (runs and workers also do it on first use)."""
        for wf in workflows:
            self._transport.register(wf.spec())

    async def aregister(self, *workflows: Workflow) -> None:
        for wf in workflows:
            await self._transport.aregister(wf.spec())

    async def _register_async(self, wf: Workflow) -> None:
        # The integration tests register through this older private name.
        await self.aregister(wf)

    def close(self) -> None:
        self._transport.close()

    async def aclose(self) -> None:
        await self._transport.aclose()
