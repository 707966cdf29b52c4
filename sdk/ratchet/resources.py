"""REST resources hanging off the client: runs, events, filters, crons, schedules, limits,
workflow versions; and `RunRef`, the handle of a triggered run."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from ratchet import _codec, _sse
from ratchet._transport import Transport
from ratchet._transport import decode as _transport_decode
from ratchet.context import current_context
from ratchet.errors import ApiError, RunFailed

LogLines = list[dict[str, Any]]  # an alias: inside `Runs`, `list` names its method
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
# A long poll is cut into chunks so that no single HTTP request outlives the client timeout.
WAIT_CHUNK_S = 30.0
RESULTS_CHUNK = 1000  # runs per POST /runs/results (the API's limit)
STREAM_APPEAR_WAIT_S = 10.0


class _Resource:
    def __init__(self, transport: Transport) -> None:
        self._c = transport


class Runs(_Resource):
    def get(self, run_id: str, *, wait_s: float = 0.0, missing_ok: bool = False) -> Any:
        """The run with tasks, outputs and errors; `wait_s` long-polls for its end."""
        try:
            return self._c.request("GET", f"/runs/{run_id}", params={"wait_s": wait_s})
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    async def aio_get(self, run_id: str, *, wait_s: float = 0.0, missing_ok: bool = False) -> Any:
        try:
            return await self._c.arequest("GET", f"/runs/{run_id}", params={"wait_s": wait_s})
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def list(self, *, status: str | None = None, workflow: str | None = None, limit: int = 50,
             parent_run_id: str | None = None) -> Any:
        """Runs, newest first; `parent_run_id` lists that run's child runs."""
        return self._c.request("GET", "/runs", params=_list_params(status, workflow, limit,
                                                                  parent_run_id))

    async def aio_list(self, *, status: str | None = None, workflow: str | None = None,
                       limit: int = 50, parent_run_id: str | None = None) -> Any:
        return await self._c.arequest("GET", "/runs", params=_list_params(status, workflow, limit,
                                                                         parent_run_id))

    def cancel(self, run_id: str) -> Any:
        """Cancel the run; its unfinished child runs are cancelled with it, recursively."""
        return self._c.request("POST", f"/runs/{run_id}/cancel")

    async def aio_cancel(self, run_id: str) -> Any:
        return await self._c.arequest("POST", f"/runs/{run_id}/cancel")

    def replay(self, run_id: str) -> Any:
        return self._c.request("POST", f"/runs/{run_id}/replay")

    def events(self, run_id: str) -> Any:
        return self._c.request("GET", f"/runs/{run_id}/events")

    def logs(self, run_id: str) -> LogLines:
        """The run's log lines in order: dicts of task, attempt, ts, level and message.

        While the run goes on, lines reach the log store a moment after the task wrote them
        (about a second). Once the run is reported ended (`result()` returned) every line is
        there: the server waits for the log store to catch up before answering.
        """
        out: LogLines = self._c.request("GET", f"/runs/{run_id}/logs")
        return out

    async def aio_logs(self, run_id: str) -> LogLines:
        out: LogLines = await self._c.arequest("GET", f"/runs/{run_id}/logs")
        return out

    # talking to a run (docs/interaction.md) ------------------------------------------------
    def signal(self, run_id: str, name: str, payload: Any = None) -> Any:
        """Send signal `name` with a JSON `payload` to the run: a durable task waiting in
        `ctx.aio_wait_for_signal(name)` gets it, or the next one to wait does. Raises ApiError
        409 when the run has finished, 429 when 1,000 signals already wait for it."""
        return self._c.request("POST", f"/runs/{run_id}/signals/{name}",
                               json=_codec.to_builtins(payload))

    async def aio_signal(self, run_id: str, name: str, payload: Any = None) -> Any:
        return await self._c.arequest("POST", f"/runs/{run_id}/signals/{name}",
                                      json=_codec.to_builtins(payload))

    def state(self, run_id: str) -> Any:
        """The latest value the run's durable tasks passed to `ctx.set_state` (None: none)."""
        return self._c.request("GET", f"/runs/{run_id}/state")["state"]

    async def aio_state(self, run_id: str) -> Any:
        return (await self._c.arequest("GET", f"/runs/{run_id}/state"))["state"]

    def fork(self, run_id: str, *, from_task: str, input: Any = None,
             version_id: str | None = None, from_step: int | None = None) -> RunRef:
        """A new run from this one: `from_task` and every task after it run again (on the
        workflow's current version unless `version_id` pins one, with `input` replacing the
        run input when given); every other task's recorded output is reused. For a durable
        `from_task`, `from_step=N` keeps its durable log before position N."""
        doc = self._c.request("POST", f"/runs/{run_id}/fork",
                              json=_fork_body(from_task, input, version_id, from_step))
        return RunRef(self._c, doc["run_id"])

    async def aio_fork(self, run_id: str, *, from_task: str, input: Any = None,
                       version_id: str | None = None, from_step: int | None = None) -> RunRef:
        doc = await self._c.arequest("POST", f"/runs/{run_id}/fork",
                                     json=_fork_body(from_task, input, version_id, from_step))
        return RunRef(self._c, doc["run_id"])

    def stream(self, run_id: str, *, appear_wait_s: float = STREAM_APPEAR_WAIT_S) -> Iterator[Any]:
        """Every chunk the run's tasks put on their stream, from the first, in order, with
        the type they were put with (str, bytes or a JSON value); ends when the run ends.

        A run triggered a moment ago may not be stored yet: the server waits up to
        `appear_wait_s` for it before answering 404.
        """
        params = {"wait_s": appear_wait_s}
        with self._c._client().stream("GET", f"/runs/{run_id}/stream", params=params) as resp:
            if resp.status_code >= 400:
                resp.read()
                _transport_decode(resp)
            yield from _sse.iterate(resp)

    async def aio_stream(
        self, run_id: str, *, appear_wait_s: float = STREAM_APPEAR_WAIT_S
    ) -> AsyncIterator[Any]:
        """`stream` for async code: `async for chunk in r.runs.aio_stream(run_id)`."""
        params = {"wait_s": appear_wait_s}
        async with self._c._aclient().stream(
            "GET", f"/runs/{run_id}/stream", params=params
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                _transport_decode(resp)
            async for chunk in _sse.aiterate(resp):
                yield chunk


def _fork_body(from_task: str, input: Any, version_id: str | None,
               from_step: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"from_task": from_task}
    if input is not None:
        body["input"] = _codec.to_builtins(input)
    if version_id is not None:
        body["version_id"] = version_id
    if from_step is not None:
        body["from_step"] = from_step
    return body


class Waitpoints(_Resource):
    """Waitpoints made by durable tasks (`ctx.aio_create_waitpoint`)."""

    def complete(self, waitpoint_id: str, payload: Any = None) -> Any:
        """Complete it with a JSON `payload` (once: ApiError 409 the second time, 410 once it
        expired); the waiting task resumes with the payload."""
        return self._c.request("POST", f"/waitpoints/{waitpoint_id}/complete",
                               json=_codec.to_builtins(payload))

    async def aio_complete(self, waitpoint_id: str, payload: Any = None) -> Any:
        return await self._c.arequest("POST", f"/waitpoints/{waitpoint_id}/complete",
                                      json=_codec.to_builtins(payload))

    def get(self, waitpoint_id: str) -> Any:
        """One waitpoint: label, status (pending, completed, expired), payload, times."""
        return self._c.request("GET", f"/waitpoints/{waitpoint_id}")

    async def aio_get(self, waitpoint_id: str) -> Any:
        return await self._c.arequest("GET", f"/waitpoints/{waitpoint_id}")

    def list(self, *, pending: bool = False, run_id: str | None = None) -> Any:
        """The tenant's waitpoints, newest first: only open ones with `pending`."""
        return self._c.request("GET", "/waitpoints", params=_wp_params(pending, run_id))

    async def aio_list(self, *, pending: bool = False, run_id: str | None = None) -> Any:
        return await self._c.arequest("GET", "/waitpoints", params=_wp_params(pending, run_id))


def _wp_params(pending: bool, run_id: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"pending": pending}
    if run_id:
        params["run_id"] = run_id
    return params


def _list_params(status: str | None, workflow: str | None, limit: int,
                 parent_run_id: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if workflow:
        params["workflow"] = workflow
    if parent_run_id:
        params["parent_run_id"] = parent_run_id
    return params


class Events(_Resource):
    def push(self, key: str, payload: Any, *, scope: str | None = None,
             metadata: dict[str, str] | None = None, event_id: str | None = None,
             idempotency_key: str | None = None) -> Any:
        """Publish an event. `idempotency_key` travels as its Ratchet-Idempotency-Key header:
        the runs it triggers claim it as `run_no_wait(idempotency_key=...)` would."""
        return self._c.request("POST", "/events", json=_event(key, payload, scope, metadata,
                                                              event_id, idempotency_key))

    def push_many(self, events: list[dict[str, Any]]) -> Any:
        """Each item: {"key", "payload", optional "scope", "metadata", "event_id"}."""
        return self._c.request("POST", "/events/bulk", json={"events": events})

    async def aio_push(self, key: str, payload: Any, *, scope: str | None = None,
                       metadata: dict[str, str] | None = None, event_id: str | None = None,
                       idempotency_key: str | None = None) -> Any:
        return await self._c.arequest(
            "POST", "/events", json=_event(key, payload, scope, metadata, event_id, idempotency_key)
        )


def _event(key: str, payload: Any, scope: str | None, metadata: dict[str, str] | None,
           event_id: str | None, idempotency_key: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "payload": _codec.to_builtins(payload)}
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    if scope is not None:
        body["scope"] = scope
    if metadata:
        body["metadata"] = metadata
    if event_id:
        body["event_id"] = event_id
    return body


class Filters(_Resource):
    def create(self, *, workflow: str, expression: str, scope: str | None = None,
               payload: Any = None) -> Any:
        body = {"workflow": workflow, "expression": expression, "scope": scope,
                "payload": _codec.to_builtins(payload) if payload is not None else None}
        return self._c.request("POST", "/filters", json=body)

    def list(self, *, workflow: str | None = None) -> Any:
        return self._c.request("GET", "/filters", params={"workflow": workflow} if workflow else None)

    def get(self, filter_id: str) -> Any:
        return self._c.request("GET", f"/filters/{filter_id}")

    def update(self, filter_id: str, **fields: Any) -> Any:
        return self._c.request("PATCH", f"/filters/{filter_id}", json=fields)

    def delete(self, filter_id: str) -> Any:
        return self._c.request("DELETE", f"/filters/{filter_id}")


class Crons(_Resource):
    def create(self, *, workflow: str, expression: str, input: Any = None, name: str | None = None,
               metadata: dict[str, str] | None = None) -> Any:
        body = {"workflow": workflow, "expression": expression, "name": name,
                "input": _codec.to_builtins(input) if input is not None else {},
                "metadata": metadata or {}}
        return self._c.request("POST", "/crons", json=body)

    def list(self) -> Any:
        return self._c.request("GET", "/crons")

    def delete(self, cron_id: str) -> Any:
        return self._c.request("DELETE", f"/crons/{cron_id}")


class Scheduled(_Resource):
    def create(self, *, workflow: str, run_at: datetime, input: Any = None,
               metadata: dict[str, str] | None = None) -> Any:
        if run_at.tzinfo is None:
            raise ValueError("run_at must be timezone-aware")
        body = {"workflow": workflow, "run_at": run_at.isoformat(),
                "input": _codec.to_builtins(input) if input is not None else {},
                "metadata": metadata or {}}
        return self._c.request("POST", "/scheduled", json=body)

    def list(self) -> Any:
        return self._c.request("GET", "/scheduled")

    def delete(self, scheduled_id: str) -> Any:
        return self._c.request("DELETE", f"/scheduled/{scheduled_id}")


class RateLimits(_Resource):
    """Static rate-limit keys that tasks reference with `RateLimit(key=...)`."""

    def put(self, key: str, *, limit: int, per: str = "second", burst: int | None = None) -> Any:
        """Create or change a key: at most `limit` units start in any window of `per`.

        `burst` switches the key to a token bucket holding `burst` units, refilled at
        limit/per: it starts a burst at once after a quiet spell, so one window may see
        up to burst + limit units.
        """
        return self._c.request("PUT", f"/rate-limits/{key}", json=_limit(key, limit, per, burst))

    async def aio_put(self, key: str, *, limit: int, per: str = "second",
                      burst: int | None = None) -> Any:
        return await self._c.arequest(
            "PUT", f"/rate-limits/{key}", json=_limit(key, limit, per, burst)
        )

    def get(self, key: str) -> Any:
        return self._c.request("GET", f"/rate-limits/{key}")

    def list(self) -> Any:
        return self._c.request("GET", "/rate-limits")


def _limit(key: str, limit: int, per: str, burst: int | None) -> dict[str, Any]:
    if per not in ("second", "minute", "hour"):
        raise ValueError("per must be 'second', 'minute' or 'hour'")
    body: dict[str, Any] = {"key": key, "limit": limit, "per": per}
    if burst is not None:
        body["burst"] = burst
    return body


class Workflows(_Resource):
    """Registered workflows and their versions."""

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every registered version of `name`: dicts of id, hash, created_at and current."""
        out: list[dict[str, Any]] = self._c.request("GET", f"/workflows/{name}/versions")
        return out

    async def aio_versions(self, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = await self._c.arequest("GET", f"/workflows/{name}/versions")
        return out

    def rollback(self, name: str, version_id: str) -> Any:
        """Make `version_id` the version new runs of `name` use; runs in flight keep theirs."""
        return self._c.request("POST", f"/workflows/{name}/rollback",
                               json={"version_id": version_id})

    async def aio_rollback(self, name: str, version_id: str) -> Any:
        return await self._c.arequest("POST", f"/workflows/{name}/rollback",
                                      json={"version_id": version_id})

    def pause(self, name: str, mode: str = "queue") -> dict[str, Any]:
        """Pause a workflow: `"queue"` keeps new runs (from any trigger) until `resume`;
        `"drop"` refuses API triggers (409) and skips event and cron ones. Running tasks go on."""
        out: dict[str, Any] = self._c.request("POST", f"/workflows/{name}/pause", json={"mode": mode})
        return out

    async def aio_pause(self, name: str, mode: str = "queue") -> dict[str, Any]:
        out: dict[str, Any] = await self._c.arequest("POST", f"/workflows/{name}/pause",
                                                     json={"mode": mode})
        return out

    def resume(self, name: str) -> dict[str, Any]:
        """Resume a paused workflow: the runs it kept start, new ones start at once."""
        out: dict[str, Any] = self._c.request("POST", f"/workflows/{name}/resume")
        return out

    async def aio_resume(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._c.arequest("POST", f"/workflows/{name}/resume")
        return out

    def pause_state(self, name: str) -> dict[str, Any]:
        """{"paused", "mode", "paused_at", "dropped", "held", ...} of the workflow."""
        out: dict[str, Any] = self._c.request("GET", f"/workflows/{name}/pause")
        return out

    async def aio_pause_state(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._c.arequest("GET", f"/workflows/{name}/pause")
        return out


class _ResultGather:
    """Coalesces the `aio_result()` calls one event loop makes at the same moment (a task
    gathering the children it fanned out) into bulk long-polls of POST /runs/results: one
    request answers for up to RESULTS_CHUNK runs instead of one request per run."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        self._next: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._polls: set[asyncio.Task[None]] = set()

    def wait(self, run_id: str) -> asyncio.Future[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        if not self._next:
            loop.call_soon(self._launch)  # after the calls made in this same loop pass
        self._next.setdefault(run_id, []).append(fut)
        return fut

    def _launch(self) -> None:
        batch, self._next = self._next, {}
        ids = list(batch)
        for i in range(0, len(ids), RESULTS_CHUNK):
            task = asyncio.create_task(self._poll({r: batch[r] for r in ids[i : i + RESULTS_CHUNK]}))
            self._polls.add(task)
            task.add_done_callback(self._polls.discard)

    async def _poll(self, waiting: dict[str, list[asyncio.Future[dict[str, Any]]]]) -> None:
        try:
            while True:
                for rid in [r for r, futs in waiting.items() if all(f.done() for f in futs)]:
                    del waiting[rid]  # every caller gave up (timed out or cancelled)
                if not waiting:
                    return
                out = await self._t.arequest(
                    "POST", "/runs/results", json={"run_ids": list(waiting), "wait_s": WAIT_CHUNK_S}
                )
                for run in out["runs"]:
                    for fut in waiting.pop(run["id"], ()):
                        if not fut.done():
                            fut.set_result(run)
        except Exception as exc:
            for futs in waiting.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(exc)


# One gatherer per transport and event loop (HTTP connections cannot cross loops).
_GATHERS: weakref.WeakKeyDictionary[Transport, dict[int, _ResultGather]] = (
    weakref.WeakKeyDictionary()
)


def _gather_for(transport: Transport) -> _ResultGather:
    per_loop = _GATHERS.setdefault(transport, {})
    key = id(asyncio.get_running_loop())
    gather = per_loop.get(key)
    if gather is None:
        gather = per_loop[key] = _ResultGather(transport)
    return gather


class RunRef:
    """A triggered run: `result()` waits for it and returns `{task_name: output}`."""

    def __init__(self, transport: Transport, run_id: str, *, deduplicated: bool = False) -> None:
        self._transport = transport
        self._runs = Runs(transport)
        self.run_id = run_id
        # An idempotency key answered an earlier trigger's run (docs/flow-control.md).
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"RunRef({self.run_id!r})"

    def result(self, timeout_s: float = 3600.0) -> dict[str, Any]:
        """Wait for the run to end; its outputs, or `RunFailed` when it failed or was cancelled."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait = max(0.0, min(WAIT_CHUNK_S, deadline - time.monotonic()))
            run = self._runs.get(self.run_id, wait_s=wait, missing_ok=True)
            if run is not None and run["status"] in TERMINAL:
                return _outcome(run)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.run_id} did not finish within {timeout_s}s")

    async def aio_result(self, timeout_s: float = 3600.0) -> dict[str, Any]:
        """`result()` for async code. Calls made together (`asyncio.gather` over many refs)
        share bulk requests. In a durable task the wait holds no worker slot and survives
        restarts (docs/durable.md); `timeout_s` then bounds only the final read."""
        ctx = current_context()
        if ctx is not None:
            await ctx._await_runs([self.run_id])
        try:
            run = await asyncio.wait_for(_gather_for(self._transport).wait(self.run_id), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"run {self.run_id} did not finish within {timeout_s}s") from None
        return _outcome(run)


def _outcome(run: dict[str, Any]) -> dict[str, Any]:
    if run["status"] == "SUCCEEDED":
        return dict(run["output"])
    raise RunFailed(run["id"], run["status"], dict(run.get("errors") or {}))
