"""Server-Sent Event streams that keep the runs list and a run's page current.

Each stream is one `live.Subscription`; on a change it sends named events whose data is the
HTML fragment to swap (htmx's SSE extension puts each where `sse-swap` names it). The first
message of a stream carries the current state, so nothing that changed between the page
render and the connection is missed.

A stream lives only as long as its session: when the token is revoked (broadcast) or stops
resolving (expiry, or a lost broadcast: re-checked every CHECK_S), it sends `session-ended`
with the login URL, which static/dashboard.js follows, and closes. Pages with no stream of
their own hold `/ui/live/session`, which sends nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Literal

from litestar import Controller, Request, get
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response import ServerSentEvent, ServerSentEventMessage

from services.api.actions.runs import CHILDREN_SHOWN
from services.api.actions.stream import Chunk, End, run_chunks
from services.api.auth import Api
from services.api.state import ApiState
from services.api.ui.live import Broadcaster, Subscription
from services.api.ui.render import macro
from services.api.ui.session import ENDED_URL, UiSession
from services.api.ui.views import RunPage, run_logs, run_page, status_class

KEEPALIVE_S = 15.0
# How often a stream re-checks its token besides the revocation broadcast: revocation and
# expiry must end a session within 2 s (tokens.REVOKE_WITHIN_S) even if the broadcast is lost.
CHECK_S = 0.5
# After a change of a run, its log is read again this long after (seconds): lines reach the
# log store about a second after a task writes them. Two reads, then none until the next change.
LOG_SETTLE_S = (1.5, 5.0)
# After sending, gather what arrives next for this long: a burst becomes one message.
COALESCE_S = 0.2
MAX_IDS = 200
MAX_CHUNK_STREAMS = 500  # open stream panels per API process
PARTS = "run_parts.html"


class SessionEnded(Exception):
    """The stream's token was revoked or has expired."""


Wake = Literal["change", "keepalive", "due"]


async def _next(
    api: ApiState, sub: Subscription, session: UiSession, due: float | None = None
) -> Wake:
    """Wait for changes, a keep-alive tick, or the loop time `due`. Raises StopAsyncIteration
    when the service stops, SessionEnded when the session's token no longer works."""
    loop = asyncio.get_running_loop()
    keepalive_at = loop.time() + KEEPALIVE_S
    while True:
        waiters = {asyncio.ensure_future(sub.wake.wait()),
                   asyncio.ensure_future(api.stopping.wait())}
        timeout = CHECK_S if due is None else max(0.0, min(CHECK_S, due - loop.time()))
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if api.stopping.is_set():
            raise StopAsyncIteration
        if sub.ended or not await session.alive(api):
            raise SessionEnded
        if sub.wake.is_set():
            return "change"
        now = loop.time()
        if due is not None and now >= due:
            return "due"
        if now >= keepalive_at:
            return "keepalive"


def _ended() -> ServerSentEventMessage:
    return ServerSentEventMessage(event="session-ended", data=ENDED_URL)


def _subscribe(
    api: ApiState, session: UiSession, watch: frozenset[str] = frozenset(), *,
    tasks_of: str | None = None, counts_created: bool = False,
) -> Subscription:
    try:
        return Broadcaster.of(api).subscribe(
            session.tenant, watch, tasks_of=tasks_of, counts_created=counts_created,
            token_id=session.principal.token_id,
        )
    except OverflowError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc


class LiveStreams(Controller):
    path = "/ui/live"

    @get("/session")
    async def session_only(self, session: UiSession, api: Api) -> ServerSentEvent:
        """Nothing but the end of the session (for pages without a stream of their own)."""
        sub = _subscribe(api, session)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            try:
                while True:
                    try:
                        if await _next(api, sub, session) == "keepalive":
                            yield ServerSentEventMessage(comment="keep-alive")
                        sub.take()
                    except StopAsyncIteration:
                        return
                    except SessionEnded:
                        yield _ended()
                        return
            finally:
                Broadcaster.of(api).unsubscribe(sub)

        return ServerSentEvent(events())

    @get("/runs")
    async def runs(self, session: UiSession, api: Api, ids: str = "") -> ServerSentEvent:
        """Status changes of the listed runs, and a count of runs created since."""
        watched = frozenset(filter(None, ids.split(",")[:MAX_IDS]))
        sub = _subscribe(api, session, watched, counts_created=True)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            announced = 0
            try:
                current = await api.runs.statuses(session.tenant, sorted(watched))
                for run_id, status in current.items():
                    yield _badge(run_id, status)
                while True:
                    try:
                        if await _next(api, sub, session) == "keepalive":
                            yield ServerSentEventMessage(comment="keep-alive")
                            continue
                    except StopAsyncIteration:
                        return
                    except SessionEnded:
                        yield _ended()
                        return
                    runs, _, overflowed = sub.take()
                    for run_id, status in runs.items():
                        yield _badge(run_id, status)
                    if overflowed or sub.created != announced:
                        announced = sub.created
                        yield ServerSentEventMessage(event="new-runs", data=macro(
                            PARTS, "new_runs", announced, overflowed
                        ))
                    await asyncio.sleep(COALESCE_S)
            finally:
                Broadcaster.of(api).unsubscribe(sub)

        return ServerSentEvent(events())

    @get("/runs/{run_id:str}/stream")
    async def chunks(self, run_id: str, request: Request, session: UiSession,  # type: ignore[type-arg]
                     api: Api) -> ServerSentEvent:
        """The run page's stream panel: the chunks of GET /runs/{id}/stream (the same
        reader, actions.stream.run_chunks, so the same order, from the first) as HTML to append, then `stream-end`.

        After a dropped connection the browser reconnects with Last-Event-ID; chunks up to it
        are skipped, so none is shown twice."""
        if await api.runs.status(session.tenant, run_id) is None:
            raise NotFoundException(f"run {run_id!r} not found")
        if _ChunkStreams.open >= MAX_CHUNK_STREAMS:
            raise HTTPException(status_code=503, detail="too many open stream panels")
        header = request.headers.get("last-event-id", "")
        seen = int(header) if header.isdigit() else 0

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            _ChunkStreams.open += 1
            count = 0
            try:
                async for item in run_chunks(api, session.tenant, run_id):
                    if isinstance(item, Chunk):
                        if item.seq <= seen:
                            continue
                        if item.payload is None:
                            yield ServerSentEventMessage(
                                comment=f"skipped undecodable chunk {item.seq}")
                            continue
                        count += 1
                        yield ServerSentEventMessage(event="chunk", id=str(item.seq),
                                                     data=macro(PARTS, "chunk", item.payload))
                    elif isinstance(item, End):
                        # After a reconnect this connection saw only part of the chunks.
                        yield ServerSentEventMessage(event="stream-end", data=macro(
                            PARTS, "stream_end", item.status, None if seen else count))
                    else:
                        yield ServerSentEventMessage(comment="keepalive")
            finally:
                _ChunkStreams.open -= 1

        return ServerSentEvent(events())

    @get("/runs/{run_id:str}")
    async def run(self, run_id: str, session: UiSession, api: Api) -> ServerSentEvent:
        """Everything on a run's page that changes: status, DAG, tasks, timeline, history."""
        tenant = session.tenant
        # Its children's changes too (those spawned so far), so their rows stay current.
        kids, _ = await api.runs.children(tenant, run_id, CHILDREN_SHOWN)
        sub = _subscribe(api, session, frozenset(k["id"] for k in kids), tasks_of=run_id)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            loop = asyncio.get_running_loop()
            try:
                view = await run_page(api, tenant, run_id)
                known = {t.id for t in view.run.tasks}
                shown_logs = view.logs
                for message in _run_parts(view, known):
                    yield message
                yield _logs(view)
                # Log lines reach the store about a second after a task writes them, so
                # after each change the log is read again a moment later (LOG_SETTLE_S).
                log_due: list[float] = [loop.time() + d for d in LOG_SETTLE_S]
                while True:
                    try:
                        wake = await _next(api, sub, session, min(log_due, default=None))
                    except StopAsyncIteration:
                        return
                    except SessionEnded:
                        yield _ended()
                        return
                    if wake == "keepalive":
                        yield ServerSentEventMessage(comment="keep-alive")
                        continue
                    if wake == "due":
                        log_due = [t for t in log_due if t > loop.time()]
                        lines, error = await run_logs(api, tenant, run_id)
                        if lines != shown_logs:
                            shown_logs = lines
                            yield _logs(dataclasses.replace(view, logs=lines,
                                                            logs_error=error))
                        continue
                    _, tasks, overflowed = sub.take()
                    view = await run_page(api, tenant, run_id)
                    changed = known if overflowed else set(tasks)
                    if {t.id for t in view.run.tasks} != known:
                        known = {t.id for t in view.run.tasks}
                        changed = set()
                        yield ServerSentEventMessage(
                            event="tasks", data=macro(PARTS, "task_list", view, status_class)
                        )
                    for message in _run_parts(view, changed):
                        yield message
                    if view.logs != shown_logs:
                        shown_logs = view.logs
                        yield _logs(view)
                    log_due = [loop.time() + d for d in LOG_SETTLE_S]
                    await asyncio.sleep(COALESCE_S)
            finally:
                Broadcaster.of(api).unsubscribe(sub)

        return ServerSentEvent(events())


class _ChunkStreams:
    """Open stream panels of this process (each holds a JetStream consumer)."""

    open = 0


def _logs(view: RunPage) -> ServerSentEventMessage:
    return ServerSentEventMessage(event="logs", data=macro(PARTS, "logs", view))


def _badge(run_id: str, status: str) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        event=f"run-{run_id}", data=macro(PARTS, "badge", status, status_class(status))
    )


def _run_parts(view: RunPage, tasks: set[str]) -> list[ServerSentEventMessage]:
    out = [
        ServerSentEventMessage(event="run-head", data=macro(PARTS, "run_head", view, status_class)),
        ServerSentEventMessage(event="dag", data=view.dag),
        ServerSentEventMessage(event="timeline", data=macro(PARTS, "timeline", view)),
        ServerSentEventMessage(event="history", data=macro(PARTS, "history", view)),
        ServerSentEventMessage(event="children",
                               data=macro(PARTS, "children", view, status_class)),
        ServerSentEventMessage(event="state", data=macro(PARTS, "run_state", view)),
        ServerSentEventMessage(event="waitpoints", data=macro(PARTS, "waitpoint_rows", view)),
    ]
    for task in view.run.tasks:
        if task.id in tasks:
            out.append(ServerSentEventMessage(
                event=f"task-{task.id}", data=macro(PARTS, "task_body", view, task, status_class)
            ))
    return out
