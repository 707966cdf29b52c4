"""`Ratchet`: the entry point — define workflows, trigger and inspect runs, start workers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from ratchet import _codec
from ratchet.config import ClientConfig
from ratchet.errors import ApiError, RunFailed
from ratchet.resources import Crons, Events, Filters, RateLimits, Runs, Scheduled
from ratchet.types import Concurrency, StickyStrategy
from ratchet.workflow import Task, TaskFn, Workflow

if TYPE_CHECKING:
    from ratchet.worker import Worker

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
WAIT_CHUNK_S = 30.0


class RunRef:
    """A triggered run: `result()` waits for it and returns `{task_name: output}`."""

    def __init__(self, client: Ratchet, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"RunRef({self.run_id!r})"

    def result(self, timeout_s: float = 3600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            wait = max(0.0, min(WAIT_CHUNK_S, deadline - time.monotonic()))
            run = self.client.runs.get(self.run_id, wait_s=wait, missing_ok=True)
            if run is not None and run["status"] in TERMINAL:
                return _outcome(run)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.run_id} did not finish within {timeout_s}s")

    async def aio_result(self, timeout_s: float = 3600.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            wait = max(0.0, min(WAIT_CHUNK_S, deadline - loop.time()))
            run = await self.client.runs.aio_get(self.run_id, wait_s=wait, missing_ok=True)
            if run is not None and run["status"] in TERMINAL:
                return _outcome(run)
            if loop.time() >= deadline:
                raise TimeoutError(f"run {self.run_id} did not finish within {timeout_s}s")


def _outcome(run: dict[str, Any]) -> dict[str, Any]:
    if run["status"] == "SUCCEEDED":
        return dict(run["output"])
    raise RunFailed(run["id"], run["status"], dict(run.get("errors") or {}))


class Ratchet:
    """Client for one tenant. Reads RATCHET_TOKEN, RATCHET_API_URL, RATCHET_GRPC_ADDR."""

    def __init__(
        self,
        token: str | None = None,
        api_url: str | None = None,
        grpc_addr: str | None = None,
        *,
        timeout_s: float = 75.0,
    ) -> None:
        self.config = ClientConfig.resolve(token, api_url, grpc_addr)
        self._timeout_s = timeout_s
        self._sync: httpx.Client | None = None
        self._async: dict[int, httpx.AsyncClient] = {}
        self._lock = threading.Lock()
        self.runs = Runs(self)
        self.events = Events(self)
        self.filters = Filters(self)
        self.crons = Crons(self)
        self.scheduled = Scheduled(self)
        self.rate_limits = RateLimits(self)

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
    ) -> Workflow:
        return Workflow(
            self, name, input=input, description=description, on_events=on_events,
            on_crons=on_crons, concurrency=concurrency, default_priority=default_priority,
            sticky=sticky,
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
            wf.standalone_task = task  # type: ignore[attr-defined]
            return wf

        return decorate

    def worker(
        self,
        name: str,
        workflows: list[Workflow],
        slots: int = 10,
        labels: dict[str, str] | None = None,
    ) -> Worker:
        from ratchet.worker import Worker

        return Worker(self, name, workflows, slots=slots, labels=labels or {})

    # HTTP ---------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.config.token}"}

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._sync is None:
                self._sync = httpx.Client(
                    base_url=self.config.api_url, headers=self._headers(), timeout=self._timeout_s
                )
            return self._sync

    def _aclient(self) -> httpx.AsyncClient:
        # One AsyncClient per event loop: connections cannot cross loops.
        key = id(asyncio.get_running_loop())
        client = self._async.get(key)
        if client is None:
            client = httpx.AsyncClient(
                base_url=self.config.api_url, headers=self._headers(), timeout=self._timeout_s,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
            )
            self._async[key] = client
        return client

    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        resp = self._client().request(method, path, json=json, params=params)
        return _decode(resp)

    async def arequest(self, method: str, path: str, json: Any = None, params: Any = None) -> Any:
        resp = await self._aclient().request(method, path, json=json, params=params)
        return _decode(resp)

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        for client in list(self._async.values()):
            await client.aclose()
        self._async.clear()

    # registration and triggers (used by Workflow) ------------------------------------
    def _register_sync(self, wf: Workflow) -> None:
        spec = wf.spec()
        if wf._reg.registered_spec != spec:
            self.request("POST", "/workflows", json=spec)
            wf._reg.registered_spec = spec

    async def _register_async(self, wf: Workflow) -> None:
        spec = wf.spec()
        if wf._reg.registered_spec != spec:
            await self.arequest("POST", "/workflows", json=spec)
            wf._reg.registered_spec = spec

    def register(self, *workflows: Workflow) -> None:
        for wf in workflows:
            self._register_sync(wf)

    @staticmethod
    def _run_body(input: Any, priority: int | None, metadata: dict[str, str] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"input": _codec.to_builtins(input) if input is not None else {}}
        if priority is not None:
            body["priority"] = priority
        if metadata:
            body["metadata"] = metadata
        return body

    def _trigger_sync(self, name: str, input: Any, priority: int | None,
                      metadata: dict[str, str] | None) -> RunRef:
        out = self.request("POST", f"/workflows/{name}/run", json=self._run_body(input, priority, metadata))
        return RunRef(self, out["run_id"])

    async def _trigger_async(self, name: str, input: Any, priority: int | None,
                             metadata: dict[str, str] | None) -> RunRef:
        out = await self.arequest("POST", f"/workflows/{name}/run",
                                  json=self._run_body(input, priority, metadata))
        return RunRef(self, out["run_id"])

    def _trigger_bulk_sync(self, name: str, inputs: list[Any], priority: int | None) -> list[RunRef]:
        refs: list[RunRef] = []
        for i in range(0, len(inputs), 1000):
            chunk = [self._run_body(x, priority, None) for x in inputs[i : i + 1000]]
            out = self.request("POST", f"/workflows/{name}/run/bulk", json={"runs": chunk})
            refs.extend(RunRef(self, rid) for rid in out["run_ids"])
        return refs


def _decode(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            body = resp.json()
            detail = body.get("detail", resp.text)
            extra = body.get("extra")
        except ValueError:
            detail, extra = resp.text, None
        raise ApiError(resp.status_code, str(detail), extra)
    if not resp.content:
        return None
    return resp.json()


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("datetimes must be timezone-aware")
    return value.isoformat()
