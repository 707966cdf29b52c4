"""Server-Sent Event streams that keep the runs list and a run's page current.

Each stream is one `live.Subscription`; on a change it sends named events whose data is the
HTML fragment to swap (htmx's SSE extension puts each where `sse-swap` names it). The first
message of a stream carries the current state, so nothing that changed between the page
render and the connection is missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from litestar import Controller, get
from litestar.exceptions import HTTPException
from litestar.response import ServerSentEvent, ServerSentEventMessage

from services.api.auth import Api
from services.api.state import ApiState
from services.api.ui import queries
from services.api.ui.live import Broadcaster, Subscription
from services.api.ui.render import macro
from services.api.ui.session import UiSession
from services.api.ui.views import RunPage, run_page, status_class

KEEPALIVE_S = 15.0
# After sending, gather what arrives next for this long: a burst becomes one message.
COALESCE_S = 0.2
MAX_IDS = 200
PARTS = "run_parts.html"


async def _next(api: ApiState, sub: Subscription) -> bool:
    """Wait for changes (True), a keep-alive tick (False); raise StopAsyncIteration at stop."""
    waiters = {asyncio.ensure_future(sub.wake.wait()), asyncio.ensure_future(api.stopping.wait())}
    try:
        await asyncio.wait(waiters, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
    if api.stopping.is_set():
        raise StopAsyncIteration
    return sub.wake.is_set()


class LiveStreams(Controller):
    path = "/ui/live"

    @get("/runs")
    async def runs(self, session: UiSession, api: Api, ids: str = "") -> ServerSentEvent:
        """Status changes of the listed runs, and a count of runs created since."""
        watched = frozenset(filter(None, ids.split(",")[:MAX_IDS]))
        try:
            sub = Broadcaster.of(api).subscribe(session.tenant, watched, counts_created=True)
        except OverflowError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            announced = 0
            try:
                current = await queries.run_statuses(api.pool, session.tenant, sorted(watched))
                for run_id, status in current.items():
                    yield _badge(run_id, status)
                while True:
                    try:
                        if not await _next(api, sub):
                            yield ServerSentEventMessage(comment="keep-alive")
                            continue
                    except StopAsyncIteration:
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
        try:
            sub = Broadcaster.of(api).subscribe(session.tenant, tasks_of=run_id)
        except OverflowError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        tenant = session.tenant

        async def events() -> AsyncIterator[ServerSentEventMessage]:
            try:
                view = await run_page(api, tenant, run_id)
                known = {t.id for t in view.run.tasks}
                for message in _run_parts(view, known):
                    yield message
                while True:
                    try:
                        if not await _next(api, sub):
                            yield ServerSentEventMessage(comment="keep-alive")
                            continue
                    except StopAsyncIteration:
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
    ]
    for task in view.run.tasks:
        if task.id in tasks:
            out.append(ServerSentEventMessage(
                event=f"task-{task.id}", data=macro(PARTS, "task_body", view, task, status_class)
            ))
    return out
