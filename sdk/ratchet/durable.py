"""Durable tasks and conditions: `DurableContext`, `Sleep`, `Event`, `Signal`, `ParentOutput`.

A durable task (`@wf.durable_task()`) gets a `DurableContext`. Each of its waits and memoized
reads takes the next *position* in the task's durable log, kept by the scheduler in
PostgreSQL. While a wait is pending the task holds no regular worker slot. If the worker dies,
the task runs again from the top on any worker and *replays*: each call finds its position
in the log and returns the recorded result at once, up to the wait that is still pending,
which keeps its original deadline. The code must therefore ask for the same waits in the same
order on every replay; asking for another at a recorded position raises `NonDeterminism`.

`Sleep` and `Event` are also the conditions of `aio_wait_any` and of a DAG task's
`wait_for`; `Signal` is one more condition of `aio_wait_any`; `ParentOutput` is the condition
of `skip_if` / `cancel_if`. Signals, waitpoints and `set_state` are in docs/interaction.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ratchet import _codec
from ratchet._proto import worker_pb2 as pb
from ratchet._transport import Transport
from ratchet.context import Context, _Named
from ratchet.errors import NonRetryable, RatchetError


class NonDeterminism(NonRetryable):
    """A replay asked for a different wait than the one recorded at `position`."""

    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"non-deterministic durable task at position {position}: {message}")
        self.position = position


@dataclass(frozen=True, slots=True)
class Sleep:
    """A condition that holds once `duration` has passed (since the wait, or since the DAG
    task became ready)."""

    duration: timedelta | float

    @property
    def seconds(self) -> float:
        d = self.duration
        seconds = d.total_seconds() if isinstance(d, timedelta) else float(d)
        if seconds < 0:
            raise ValueError("a Sleep lasts zero seconds or more")
        return seconds


@dataclass(frozen=True, slots=True)
class Event:
    """A condition that holds when an event `key` arrives (in `scope`, when given) whose
    payload passes the CEL `expression` (the payload is `input`, as in filters)."""

    key: str
    expression: str | None = None
    scope: str | None = None

    def __post_init__(self) -> None:
        if not self.key or any(c.isspace() for c in self.key):
            raise ValueError(f"invalid event key {self.key!r}")


@dataclass(frozen=True, slots=True)
class Signal:
    """A condition that holds when signal `name` is sent to the run (`r.runs.signal`): one
    sent earlier and not yet taken by another wait counts too, oldest first."""

    name: str

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 128 or not set(self.name) <= _SIGNAL_CHARS:
            raise ValueError(f"invalid signal name {self.name!r}: 1 to 128 of A-Z a-z 0-9 _ . : -")


_SIGNAL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
MAX_STATE_BYTES = 64 * 1024  # what the server keeps of one ctx.set_state


@dataclass(frozen=True, slots=True)
class Waitpoint:
    """A waitpoint (`ctx.aio_create_waitpoint`): `url` completes it with the JSON POSTed
    there, no token needed; `r.waitpoints.complete(id, ...)` does the same with a token."""

    id: str
    url: str
    expires_at: datetime
    label: str = ""


@dataclass(frozen=True, slots=True)
class ParentOutput:
    """A condition over the parents' outputs, for `skip_if` / `cancel_if`: CEL where `input`
    is the output of `parent` (or of the only parent; with several, a map by name) and
    `payload` the map of every parent's output by name."""

    expression: str
    parent: _Named | str | None = None  # a parent task (or its name)

    @property
    def parent_name(self) -> str:
        p = self.parent
        return "" if p is None else p if isinstance(p, str) else p.name


Condition = Sleep | Event | Signal


@dataclass(frozen=True, slots=True)
class WaitAnyResult:
    """Which condition of `aio_wait_any` fired first: its `index` among the arguments, the
    condition itself, and for an Event its payload (None for a Sleep)."""

    index: int
    condition: Condition
    payload: Any  # an Event's payload, a Signal's payload, None for a Sleep


def condition_spec(c: Sleep | Event | ParentOutput) -> dict[str, Any]:
    """The registered (JSON) form of a DAG condition."""
    if isinstance(c, Sleep):
        return {"kind": "sleep", "sleep_s": c.seconds}
    if isinstance(c, Event):
        return {"kind": "event", "key": c.key, "expression": c.expression or "", "scope": c.scope}
    return {"kind": "parent_output", "expression": c.expression, "parent": c.parent_name}


def _wait_cond(c: Condition) -> dict[str, Any]:
    if isinstance(c, Sleep):
        return {"sleep_ms": int(c.seconds * 1000)}
    if isinstance(c, Event):
        return {"event": c.key, "expression": c.expression or "", "scope": c.scope}
    if isinstance(c, Signal):
        return {"signal": c.name}
    raise TypeError(
        f"aio_wait_any takes Sleep, Event and Signal conditions, not {type(c).__name__}")


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class DurableContext(Context):
    """The `ctx` of a durable task: everything `Context` has, plus durable waits."""

    def __init__(self, *, durable_log: list[pb.DurableStep] | None = None,
                 transport: Transport | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._transport = transport  # REST, for waitpoints; None in mock_run
        self.state: Any = None  # the last value this attempt passed to set_state
        self._log = {s.position: s for s in durable_log or ()}
        self._position = 0
        self._waiters: dict[int, asyncio.Future[bytes]] = {}

    # waits ------------------------------------------------------------------------------
    async def aio_sleep_for(self, duration: timedelta | float) -> None:
        """Sleep durably: a restart resumes the sleep, keeping its original end."""
        await self._wait([_wait_cond(Sleep(duration))])

    async def aio_sleep_until(self, when: datetime) -> None:
        """Sleep durably until `when` (timezone-aware)."""
        if when.tzinfo is None:
            raise ValueError("aio_sleep_until needs a timezone-aware datetime")
        await self._wait([{"until_ms": int(when.timestamp() * 1000)}])

    async def aio_wait_for_event(
        self,
        key: str,
        expression: str | None = None,
        scope: str | None = None,
        timeout: timedelta | float | None = None,  # noqa: ASYNC109  # the wait is durable, asyncio.timeout is not
    ) -> Any:
        """Wait for an event `key` published after this call whose payload passes the CEL
        `expression`; return its payload. Raises TimeoutError after `timeout`."""
        conds = [_wait_cond(Event(key, expression, scope))]
        if timeout is not None:
            conds.append({**_wait_cond(Sleep(timeout)), "timeout": True})
        index, payload = await self._wait(conds)
        if index != 0:
            raise TimeoutError(f"no {key!r} event arrived within {timeout}")
        return payload

    async def aio_wait_for_signal(
        self,
        name: str,
        timeout: timedelta | float | None = None,  # noqa: ASYNC109  # durable, unlike asyncio.timeout
    ) -> Any:
        """Wait for signal `name` sent to this run (`r.runs.signal`); return its payload.

        A signal sent before this call and not taken by an earlier wait is returned at once
        (the oldest first). Raises TimeoutError after `timeout`."""
        conds = [_wait_cond(Signal(name))]
        if timeout is not None:
            conds.append({**_wait_cond(Sleep(timeout)), "timeout": True})
        index, payload = await self._wait(conds)
        if index != 0:
            raise TimeoutError(f"no {name!r} signal arrived within {timeout}")
        return payload

    def set_state(self, value: Any) -> None:
        """Publish the run's state: small JSON (at most 64 KiB) that `r.runs.state(run_id)`
        returns, the latest one winning. Recorded in the durable log: a replay that reaches
        this call again keeps the value recorded the first time."""
        raw = _canonical(_codec.to_builtins(value))
        if len(raw) > MAX_STATE_BYTES:
            raise ValueError(f"a run state is at most {MAX_STATE_BYTES} bytes of JSON, not {len(raw)}")
        position = self._next()
        entry = self._log.get(position)
        if entry is not None:
            if entry.kind != "state":
                raise NonDeterminism(position, f"the log has a {entry.kind}, the code set state")
            return
        self.state = value  # what mock_run leaves to look at
        if self._sink is not None:
            self._emit("wait", {"step": pb.DurableStep(
                position=position, kind="state", spec=raw, result=raw)})

    async def aio_create_waitpoint(
        self,
        timeout: timedelta | float | None = None,  # noqa: ASYNC109  # the waitpoint's expiry
        label: str = "",
    ) -> Waitpoint:
        """Make a waitpoint: a signed URL that completes it when JSON is POSTed to it (no
        token needed), for `aio_wait_for_waitpoint`. It expires after `timeout` (7 days by
        default). A replay returns the same waitpoint."""
        seconds = None if timeout is None else Sleep(timeout).seconds
        position = self._next()
        entry = self._log.get(position)
        if entry is not None:
            if entry.kind != "waitpoint":
                raise NonDeterminism(position, f"the log has a {entry.kind}, the code asked for"
                                               " a waitpoint")
            return _waitpoint(json.loads(entry.result))
        if self._transport is None or self._sink is None:
            raise RatchetError("mock_run cannot make waitpoints: they need the server")
        doc = await self._transport.arequest(
            "POST", f"/runs/{self.run_id}/waitpoints",
            json={"task_id": self.task_id, "position": position, "timeout_s": seconds,
                  "label": label},
        )
        memo = {"id": doc["id"], "url": doc["url"], "expires_at": doc["expires_at"],
                "label": doc["label"]}
        self._emit("wait", {"step": pb.DurableStep(
            position=position, kind="waitpoint", spec=_canonical({"label": label}),
            result=_canonical(memo),
        )})
        return _waitpoint(memo)

    async def aio_wait_for_waitpoint(self, waitpoint: Waitpoint) -> Any:
        """Wait until the waitpoint is completed; return the JSON it was completed with.
        Raises TimeoutError when it expires first."""
        expires_ms = int(waitpoint.expires_at.timestamp() * 1000)
        index, payload = await self._wait([
            {"waitpoint": waitpoint.id}, {"until_ms": expires_ms, "timeout": True},
        ])
        if index != 0:
            raise TimeoutError(f"waitpoint {waitpoint.id} expired before it was completed")
        return payload

    async def aio_wait_any(self, *conditions: Condition) -> WaitAnyResult:
        """Wait for the first of several Sleep / Event / Signal conditions; say which fired."""
        if not conditions:
            raise ValueError("aio_wait_any needs at least one condition")
        index, payload = await self._wait([_wait_cond(c) for c in conditions])
        return WaitAnyResult(index, conditions[index], payload)

    async def aio_now(self) -> datetime:
        """The current time, recorded on first use: a replay gets the same value."""
        position = self._next()
        entry = self._log.get(position)
        if entry is not None:
            if entry.kind != "now":
                raise NonDeterminism(position, f"the log has a {entry.kind}, the code asked for now")
            return datetime.fromtimestamp(json.loads(entry.result) / 1000, UTC)
        now_ms = int(time.time() * 1000)
        self._emit("wait", {"step": pb.DurableStep(
            position=position, kind="now", spec=b"{}", result=str(now_ms).encode(),
        )})
        return datetime.fromtimestamp(now_ms / 1000, UTC)

    async def _await_runs(self, run_ids: list[str]) -> None:
        """`await ref.aio_result()` in a durable task: wait durably (no slot held) for each
        run to end; the outputs are then read as usual."""
        if self._sink is None:
            return  # mock_run: nothing to wait for
        for run_id in run_ids:
            await self._wait([{"run": run_id}])

    # machinery --------------------------------------------------------------------------
    def _next(self) -> int:
        position = self._position
        self._position += 1
        return position

    async def _wait(self, conds: list[dict[str, Any]]) -> tuple[int, Any]:
        position = self._next()
        spec = _canonical({"conds": conds})
        entry = self._log.get(position)
        if entry is not None:
            if entry.kind != "wait" or entry.spec != spec:
                raise NonDeterminism(
                    position, f"the log has {entry.kind} {entry.spec.decode()}, "
                              f"the code asked for wait {spec.decode()}",
                )
            if entry.done:
                return _outcome(position, entry.result)
        if self._sink is None:
            return _mocked(conds)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiters[position] = future
        self._emit("wait", {"step": pb.DurableStep(position=position, kind="wait", spec=spec)})
        try:
            result = await future
        finally:
            self._waiters.pop(position, None)
        return _outcome(position, result)

    def _wake(self, position: int, result: bytes) -> None:
        """The scheduler says the wait at `position` is over (called on the worker's loop)."""
        future = self._waiters.get(position)
        if future is not None and not future.done():
            future.set_result(result)


def _waitpoint(memo: dict[str, Any]) -> Waitpoint:
    return Waitpoint(id=memo["id"], url=memo["url"],
                     expires_at=datetime.fromisoformat(memo["expires_at"]),
                     label=memo.get("label", ""))


def _mocked(conds: list[dict[str, Any]]) -> tuple[int, Any]:
    """`task.mock_run`: no scheduler, so sleeps (and timeouts) end at once; a wait on events
    alone can never end."""
    for index, cond in enumerate(conds):
        if "sleep_ms" in cond or "until_ms" in cond:
            return index, None
    raise RatchetError(
        "mock_run cannot deliver events or signals: give the wait a timeout or a Sleep")


def _outcome(position: int, raw: bytes) -> tuple[int, Any]:
    doc = json.loads(raw or b"null")
    if not isinstance(doc, dict):
        raise RatchetError(f"unreadable durable result at position {position}")
    if "error" in doc:
        if doc["error"] == "NonDeterminism":
            raise NonDeterminism(position, str(doc.get("message", "")))
        raise NonRetryable(f"{doc['error']}: {doc.get('message', '')}")
    return int(doc["index"]), doc.get("payload")
