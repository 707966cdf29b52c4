"""REST resources hanging off the client: runs, events, filters, crons, schedules, limits,
workflow versions; and `RunRef`, the handle of a triggered run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from ratchet import _codec, _sse
from ratchet._transport import Transport
from ratchet._transport import decode as _transport_decode
from ratchet.errors import ApiError, RunFailed

LogLines = list[dict[str, Any]]  # an alias: inside `Runs`, `list` names its method
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
# A long poll is cut into chunks so that no single HTTP request outlives the client timeout.
WAIT_CHUNK_S = 30.0
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

    def list(self, *, status: str | None = None, workflow: str | None = None, limit: int = 50) -> Any:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if workflow:
            params["workflow"] = workflow
        return self._c.request("GET", "/runs", params=params)

    def cancel(self, run_id: str) -> Any:
        return self._c.request("POST", f"/runs/{run_id}/cancel")

    def replay(self, run_id: str) -> Any:
        return self._c.request("POST", f"/runs/{run_id}/replay")

    def events(self, run_id: str) -> Any:
        return self._c.request("GET", f"/runs/{run_id}/events")

    def logs(self, run_id: str) -> LogLines:
        """The run's log lines in order: dicts of task, attempt, ts, level and message.

        Lines reach the log store a moment after the task wrote them (about a second).
        """
        out: LogLines = self._c.request("GET", f"/runs/{run_id}/logs")
        return out

    async def aio_logs(self, run_id: str) -> LogLines:
        out: LogLines = await self._c.arequest("GET", f"/runs/{run_id}/logs")
        return out

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
            yield from _sse.iterate(resp.iter_lines())

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
            async for chunk in _sse.aiterate(resp.aiter_lines()):
                yield chunk


class Events(_Resource):
    def push(self, key: str, payload: Any, *, scope: str | None = None,
             metadata: dict[str, str] | None = None, event_id: str | None = None) -> Any:
        return self._c.request("POST", "/events", json=_event(key, payload, scope, metadata, event_id))

    def push_many(self, events: list[dict[str, Any]]) -> Any:
        """Each item: {"key", "payload", optional "scope", "metadata", "event_id"}."""
        return self._c.request("POST", "/events/bulk", json={"events": events})

    async def aio_push(self, key: str, payload: Any, *, scope: str | None = None,
                       metadata: dict[str, str] | None = None, event_id: str | None = None) -> Any:
        return await self._c.arequest(
            "POST", "/events", json=_event(key, payload, scope, metadata, event_id)
        )


def _event(key: str, payload: Any, scope: str | None, metadata: dict[str, str] | None,
           event_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, "payload": _codec.to_builtins(payload)}
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


class RunRef:
    """A triggered run: `result()` waits for it and returns `{task_name: output}`."""

    def __init__(self, transport: Transport, run_id: str) -> None:
        self._runs = Runs(transport)
        self.run_id = run_id

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            wait = max(0.0, min(WAIT_CHUNK_S, deadline - loop.time()))
            run = await self._runs.aio_get(self.run_id, wait_s=wait, missing_ok=True)
            if run is not None and run["status"] in TERMINAL:
                return _outcome(run)
            if loop.time() >= deadline:
                raise TimeoutError(f"run {self.run_id} did not finish within {timeout_s}s")


def _outcome(run: dict[str, Any]) -> dict[str, Any]:
    if run["status"] == "SUCCEEDED":
        return dict(run["output"])
    raise RunFailed(run["id"], run["status"], dict(run.get("errors") or {}))
