"""Operating pages: workers, events, filters, crons and scheduled runs, rate limits."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from libs.common.tokens import Scope
from services.api.auth import Api
from services.api.repos import Invalid, RepoError
from services.api.repos.events import EventRow
from services.api.schemas.crons import CronIn
from services.api.schemas.filters import FilterIn
from services.api.ui import commands
from services.api.ui.forms import FormError, read_metadata
from services.api.ui.render import page
from services.api.ui.session import UiSession, check_csrf, require_scope

WINDOW_S = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def _back(path: str, notice: str) -> Response[str]:
    return Redirect(f"{path}?{urlencode({'notice': notice})}", status_code=303)


def _one(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[-1].strip()


class OperatePages(Controller):
    path = "/ui"

    @get("/workers")
    async def workers(self, session: UiSession, api: Api) -> Response[str]:
        rows = await api.worker_registry.list_workers(session.tenant)
        now_ms = int(time.time() * 1000)
        return page("workers.html", session=session, nav="workers", rows=rows, now_ms=now_ms,
                    stale_ms=int(api.settings.worker_heartbeat_timeout_s * 1000))

    @get("/events")
    async def events(self, session: UiSession, api: Api) -> Response[str]:
        error = None
        rows: list[EventRow] = []
        try:
            rows = await api.event_log.recent(session.tenant)
        except RepoError as exc:
            error = f"The analytics store did not answer: {exc}"
        return page("events.html", session=session, nav="events", rows=rows, error=error)

    @get("/filters")
    async def filters(self, session: UiSession, api: Api, notice: str | None = None,
                      ) -> Response[str]:
        return page("filters.html", session=session, nav="filters", notice=notice,
                    rows=await commands.filters(api, session.tenant),
                    workflows=await api.workflows.names(session.tenant))

    @post("/filters")
    async def create_filter(self, request: Request, session: UiSession,  # type: ignore[type-arg]
                            api: Api) -> Response[str]:
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "creating a filter")
        data = FilterIn(workflow=_one(form, "workflow"), expression=_one(form, "expression"),
                        scope=_one(form, "scope") or None)
        try:
            created = await commands.create_filter(api, session.principal, data)
        except Invalid as exc:
            return _back("/ui/filters", f"Not created: {exc}")
        return _back("/ui/filters", f"Filter {created.id} created.")

    @post("/filters/{filter_id:str}/delete")
    async def delete_filter(self, filter_id: str, request: Request,  # type: ignore[type-arg]
                            session: UiSession, api: Api) -> Response[str]:
        await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "deleting a filter")
        await commands.delete_filter(api, session.principal, filter_id)
        return _back("/ui/filters", f"Filter {filter_id} deleted.")

    @get("/crons")
    async def crons(self, session: UiSession, api: Api, notice: str | None = None,
                    ) -> Response[str]:
        return page("crons.html", session=session, nav="crons", notice=notice,
                    crons=await commands.crons(api, session.tenant),
                    scheduled=await commands.scheduled(api, session.tenant),
                    workflows=await api.workflows.names(session.tenant))

    @post("/crons")
    async def create_cron(self, request: Request, session: UiSession,  # type: ignore[type-arg]
                          api: Api) -> Response[str]:
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "creating a cron")
        try:
            metadata = read_metadata(_one(form, "metadata"))
            data = CronIn(workflow=_one(form, "workflow"), expression=_one(form, "expression"),
                          name=_one(form, "name") or None, metadata=metadata,
                          input=_json_or_empty(_one(form, "input")))
            created = await commands.create_cron(api, session.principal, data)
        except (FormError, Invalid, HTTPException) as exc:  # HTTPException: the 422 InputInvalid
            detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
            return _back("/ui/crons", f"Not created: {detail}")
        return _back("/ui/crons", f"Cron {created.name} created; next run {created.next_due_at}.")

    @post("/crons/{cron_id:str}/{action:str}")
    async def cron_action(self, cron_id: str, action: str, request: Request,  # type: ignore[type-arg]
                          session: UiSession, api: Api) -> Response[str]:
        await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "changing a cron")
        if action == "delete":
            await commands.delete_cron(api, session.principal, cron_id)
            return _back("/ui/crons", "Cron deleted.")
        if action == "trigger":
            # "Trigger now" is a normal run of the cron's workflow with the cron's input.
            cron = await commands.cron(api, session.tenant, cron_id)
            created = await commands.trigger(
                api, session.principal, cron.workflow, cron.input,
                {**cron.metadata, "cron": cron.name}, None,
            )
            return Redirect(f"/ui/runs/{created.run_id}", status_code=303)
        raise HTTPException(status_code=404, detail=f"no action {action!r}")

    @post("/scheduled/{scheduled_id:str}/delete")
    async def delete_scheduled(self, scheduled_id: str, request: Request,  # type: ignore[type-arg]
                               session: UiSession, api: Api) -> Response[str]:
        await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "deleting a scheduled run")
        await commands.delete_scheduled(api, session.tenant, scheduled_id)
        return _back("/ui/crons", "Scheduled run deleted.")

    @get("/rate-limits")
    async def rate_limits(self, session: UiSession, api: Api) -> Response[str]:
        limits = await commands.rate_limits(api, session.tenant)
        used = await api.rate_limits.usage(
            session.tenant, {rl.key: WINDOW_S[rl.per] for rl in limits}
        )
        return page("rate_limits.html", session=session, nav="rate-limits", limits=limits,
                    used=used)


def _json_or_empty(text: str) -> object:
    if not text:
        return {}
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise FormError(f"input: not valid JSON ({exc})") from exc
