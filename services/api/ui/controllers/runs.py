"""The runs list (filters, keyset paging, bulk actions) and the run detail page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from libs.common.statuses import RunStatus
from libs.common.tokens import Scope
from services.api.actions import fork, signals
from services.api.auth import Api
from services.api.repos import RepoError
from services.api.repos.runs import MAX_MATCHING, RunFilter, RunRow
from services.api.schemas.interaction import ForkRequest
from services.api.ui import commands
from services.api.ui.render import page
from services.api.ui.session import UiSession, check_csrf, require_scope
from services.api.ui.views import run_page, status_class

SOURCES = ("api", "event", "cron", "schedule", "child")
RUN_STATUSES = frozenset(s.value for s in RunStatus)
# How long a run page waits for a run that was triggered a moment ago to be stored.
NEW_RUN_WAIT_S = 5.0
FILTER_FIELDS = ("status", "workflow", "since", "until", "meta", "source", "event", "parent")
PAGE_SIZE = 50


@dataclass
class ParsedFilter:
    """The list's query string: what the form shows back, and what the query uses."""

    raw: dict[str, str]
    query: RunFilter = field(default_factory=RunFilter)
    problems: list[str] = field(default_factory=list)

    def qs(self, **extra: str) -> str:
        return urlencode({**{k: v for k, v in self.raw.items() if v}, **extra})


def _time(value: str, name: str, problems: list[str]) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        problems.append(f"{name}: expected a date and time like 2026-11-27T09:30")
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def parse_filter(api: Api, tenant: str, raw: dict[str, str]) -> ParsedFilter:
    raw = {k: (raw.get(k) or "").strip() for k in FILTER_FIELDS}
    parsed = ParsedFilter(raw=raw)
    q, problems = parsed.query, parsed.problems
    if raw["status"]:
        if raw["status"] in RUN_STATUSES:
            q.status = raw["status"]
        else:
            problems.append(f"status must be one of {', '.join(sorted(RUN_STATUSES))}")
    q.workflow = raw["workflow"] or None
    q.since = _time(raw["since"], "from", problems)
    q.until = _time(raw["until"], "to", problems)
    for pair in filter(None, (p.strip() for p in raw["meta"].split(","))):
        key, sep, value = pair.partition(":")
        if not sep or not key.strip():
            problems.append(f"metadata: {pair!r} is not key:value")
        else:
            q.metadata[key.strip()] = value.strip()
    if raw["source"]:
        if raw["source"] in SOURCES:
            q.source = raw["source"]
        else:
            problems.append(f"trigger must be one of {', '.join(SOURCES)}")
    if raw["event"]:
        try:
            q.run_ids = await api.event_log.runs_of(tenant, raw["event"])
        except RepoError as exc:
            problems.append(f"event: {exc}")
    q.parent_run_id = raw["parent"] or None
    return parsed


def _cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    stamp, sep, run_id = value.partition("|")
    try:
        return (datetime.fromisoformat(stamp), run_id) if sep else None
    except ValueError:
        return None


class RunPages(Controller):
    path = "/ui/runs"

    @get("/")
    async def list_page(
        self, request: Request, session: UiSession, api: Api,  # type: ignore[type-arg]
        after: str | None = None, notice: str | None = None,
    ) -> Response[str]:
        parsed = await parse_filter(api, session.tenant, dict(request.query_params))
        rows: list[RunRow] = []
        if not parsed.problems:
            rows = await api.runs.search(
                session.tenant, parsed.query, _cursor(after), PAGE_SIZE + 1
            )
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        next_qs = (
            parsed.qs(after=f"{rows[-1].created_at.isoformat()}|{rows[-1].id}") if more else None
        )
        return page(
            "runs.html", session=session, nav="runs", rows=rows, f=parsed,
            workflows=await api.workflows.names(session.tenant),
            statuses=sorted(RUN_STATUSES), sources=SOURCES, next_qs=next_qs,
            first_qs=parsed.qs() if after else None, notice=notice, status_class=status_class,
            # Every row is watched: a finished run changes again when it is replayed.
            live_ids=",".join(r.id for r in rows),
        )

    @post("/bulk")
    async def bulk(self, request: Request, session: UiSession, api: Api) -> Response[str]:  # type: ignore[type-arg]
        """Cancel or replay the selected runs, or every run the filter matches (up to 1,000)."""
        form = await check_csrf(request, session)
        action = (form.get("action") or [""])[0]
        if action not in ("cancel", "replay"):
            raise HTTPException(status_code=400, detail="action must be cancel or replay")
        require_scope(session, Scope.WRITE, f"{'cancelling' if action == 'cancel' else 'replaying'}"
                      " runs")
        parsed = await parse_filter(api, session.tenant, {k: v[0] for k, v in form.items()})
        if (form.get("scope") or [""])[0] == "filter":
            if parsed.problems:
                raise HTTPException(status_code=400, detail="; ".join(parsed.problems))
            run_ids = await api.runs.matching_ids(session.tenant, parsed.query)
        else:
            run_ids = form.get("run", [])[:MAX_MATCHING]
        done, skipped = 0, 0
        for run_id in run_ids:
            try:
                if action == "cancel":
                    await commands.cancel_run(api, session.principal, run_id)
                else:
                    await commands.replay_run(api, session.principal, run_id)
                done += 1
            except (HTTPException, RepoError):  # e.g. replaying a run that is still running
                skipped += 1
        verb = "cancel" if action == "cancel" else "replay"
        notice = f"Asked to {verb} {done} run(s)" + (f"; {skipped} skipped" if skipped else "")
        if not run_ids:
            notice = "No runs selected: tick some rows first, or choose every matching run."
        return Redirect(f"/ui/runs?{parsed.qs(notice=notice)}", status_code=303)

    @get("/{run_id:str}")
    async def detail(self, run_id: str, session: UiSession, api: Api,
                     notice: str | None = None) -> Response[str]:
        view = await run_page(api, session.tenant, run_id, wait_s=NEW_RUN_WAIT_S)
        flow = await commands.run_flow(api, session.tenant, run_id)
        return page("run.html", session=session, nav="runs", p=view, notice=notice,
                    status_class=status_class, flow=flow)

    @post("/{run_id:str}/{action:str}")
    async def act(self, run_id: str, action: str, request: Request,  # type: ignore[type-arg]
                  session: UiSession, api: Api) -> Response[str]:
        form = await check_csrf(request, session)
        if action == "cancel":
            require_scope(session, Scope.WRITE, "cancelling a run")
            await commands.cancel_run(api, session.principal, run_id)
            notice = "Cancellation requested."
        elif action == "replay":
            require_scope(session, Scope.WRITE, "replaying a run")
            await commands.replay_run(api, session.principal, run_id)
            notice = "Replay requested: the run starts again from its first tasks."
        elif action == "signal":
            require_scope(session, Scope.WRITE, "signalling a run")
            name, payload = _field(form, "name"), _json_field(form, "payload")
            await signals.send_signal(api, session.principal, run_id, name, payload)
            notice = f"Signal {name!r} sent."
        else:
            raise HTTPException(status_code=404, detail=f"no action {action!r}")
        return Redirect(f"/ui/runs/{run_id}?{urlencode({'notice': notice})}", status_code=303)

    @post("/{run_id:str}/fork")
    async def fork(self, run_id: str, request: Request,  # type: ignore[type-arg]
                   session: UiSession, api: Api) -> Response[str]:
        """Start the fork the fork page describes; then its new run's page."""
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "forking a run")
        step = _field(form, "from_step")
        req = ForkRequest(
            from_task=_field(form, "task"), input=_json_field(form, "input"),
            version_id=_field(form, "version_id") or None,
            from_step=int(step) if step.isdigit() else None,
        )
        made = await fork.fork_run(api, session.principal, run_id, req)
        reused = ", ".join(made.reused) or "nothing"
        notice = f"Forked from {run_id[:12]} at {req.from_task}; reused: {reused}."
        return Redirect(f"/ui/runs/{made.run_id}?{urlencode({'notice': notice})}",
                        status_code=303)

    @get("/{run_id:str}/fork")
    async def fork_page(self, run_id: str, session: UiSession, api: Api,
                        task: str = "") -> Response[str]:
        """Fork from a task: choose the input (the run's by default) and, for a durable
        task, the step of its log to start again from."""
        view = await run_page(api, session.tenant, run_id)
        return page("fork.html", session=session, nav="runs", p=view, task=task)


def _field(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _json_field(form: dict[str, list[str]], name: str) -> Any:
    """A JSON form field: None when empty, a 400 naming the field when not JSON."""
    raw = _field(form, name)
    if not raw:
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise HTTPException(status_code=400, detail=f"{name} is not JSON: {exc}") from exc
