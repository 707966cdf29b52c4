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
from collections.abc import AsyncIterator

from litestar import Controller, get
from litestar.exceptions import HTTPException
from litestar.response import ServerSentEvent, ServerSentEventMessage

from services.api.auth import Api
from services.api.routes.runs import CHILDREN_SHOWN
from services.api.state import ApiState
from services.api.ui.live import Broadcaster, Subscription
from services.api.ui.render import macro
from services.api.ui.session import ENDED_URL, UiSession
from services.api.ui.views import RunPage, run_page, status_class

KEEPALIVE_S = 15.0
# How often a stream re-checks its token besides the revocation broadcast: revocation and
# expiry must end a session within 2 s (tenants.REVOKE_WITHIN_S) even if the broadcast is lost.
CHECK_S = 0.5
# After sending, gather what arrives next for this long: a burst becomes one message.
COALESCE_S = 0.2
MAX_IDS = 200
PARTS = "run_parts.html"


class SessionEnded(Exception):
    """The stream's token was revoked or has expired."""


async def _next(api: ApiState, sub: Subscription, session: UiSession) -> bool:
    """Wait for changes (True) or a keep-alive tick (False). Raises StopAsyncIteration when
    the service stops, SessionEnded when the session's token no longer works."""
    waited = 0.0
    while True:
        waiters = {asyncio.ensure_future(sub.wake.wait()),
                   asyncio.ensure_future(api.stopping.wait())}
        try:
            await asyncio.wait(waiters, timeout=CHECK_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if api.stopping.is_set():
            raise StopAsyncIteration
        if sub.ended or not await session.alive(api):
            raise SessionEnded
        if sub.wake.is_set():
            return True
        waited += CHECK_S
        if waited >= KEEPALIVE_S:
            return False


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
                        if not await _next(api, sub, session):
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
                        if not await _next(api, sub, session):
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

    @get("/runs/{run_id:str}")
    async def run(self, run_id: str, session: UiSession, api: Api) -> ServerSentEvent:
        """Everything on a run's page that changes: status, DAG, tasks, timeline, history."""
        tenant = session.tenant
        # Its children's changes too (those spawned so far), so their rows stay current.
        kids, _ = await api.runs.children(tenant, run_id, CHILDREN_SHOWN)
        sub = _subscribe(api, session, frozenset(k["id"] for k in kids), tasks_of=run_id)

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            try:
                view = await run_page(api, tenant, run_id)
                known = {t.id for t in view.run.tasks}
                for message in _run_parts(view, known):
                    yield message
                while True:
                    try:
                        if not await _next(api, sub, session):
                            yield ServerSentEventMessage(comment="keep-alive")
                            continue
                    except StopAsyncIteration:
                        return
                    except SessionEnded:
                        yield _ended()
                        return
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
                    await asyncio.sleep(COALESCE_S)
            finally:
                Broadcaster.of(api).unsubscribe(sub)

        return ServerSentEvent(events())


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
    ]
    for task in view.run.tasks:
        if task.id in tasks:
            out.append(ServerSentEventMessage(
                event=f"task-{task.id}", data=macro(PARTS, "task_body", view, task, status_class)
            ))
    return out
