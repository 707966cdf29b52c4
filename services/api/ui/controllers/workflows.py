"""Workflows: the list, and per workflow its trigger form, definition and versions."""

from __future__ import annotations

import difflib
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Redirect

from libs.common.limits import LimitExceeded
from libs.common.tokens import Scope
from services.api.auth import Api
from services.api.repos import RepoError
from services.api.schemas import WorkflowView
from services.api.ui import commands
from services.api.ui.forms import FormError, fields, read_input, read_metadata
from services.api.ui.render import page, pretty_json
from services.api.ui.session import UiSession, check_csrf, require_scope
from services.api.ui.svg import DagNode, dag_svg


def _dag(view: WorkflowView) -> str:
    nodes = [
        DagNode(str(t["name"]), tuple(t.get("parents", ())), "", "")
        for t in view.spec.get("tasks", [])
    ]
    return dag_svg(nodes)


class WorkflowPages(Controller):
    path = "/ui/workflows"

    @get("/")
    async def list_page(self, session: UiSession, api: Api) -> Response[str]:
        views = await commands.workflows(api, session.tenant)
        paused = await commands.paused_workflows(api, session.tenant)
        return page("workflows.html", session=session, nav="workflows", workflows=views,
                    paused=paused)

    @get("/{name:str}")
    async def detail(
        self, name: str, session: UiSession, api: Api, a: str | None = None,
        b: str | None = None, notice: str | None = None,
    ) -> Response[str]:
        view = await commands.workflow(api, session.tenant, name)
        return await self._render(api, session, view, {}, None, a, b, notice)

    async def _render(
        self, api: Api, session: UiSession, view: WorkflowView, values: dict[str, str],
        error: str | None, a: str | None = None, b: str | None = None,
        notice: str | None = None,
    ) -> Response[str]:
        versions = await commands.versions(api, session.tenant, view.name)
        diff: list[str] | None = None
        known = {v.id for v in versions}
        if a in known and b in known and a is not None and b is not None:
            old = await api.workflows.version(session.tenant, view.name, a)
            new = await api.workflows.version(session.tenant, view.name, b)
            diff = list(difflib.unified_diff(
                pretty_json(old.spec).splitlines(), pretty_json(new.spec).splitlines(),
                fromfile=a, tofile=b, lineterm="",
            ))
        schema = view.spec.get("input_schema")
        pause = await commands.pause_state(api, session.tenant, view.name)
        return page(
            "workflow.html", session=session, nav="workflows", w=view, dag=_dag(view),
            fields=fields(schema, values), values=values, error=error, versions=versions,
            diff=diff, a=a, b=b, status_code=422 if error else 200, notice=notice, pause=pause,
        )

    @post("/{name:str}/run")
    async def trigger(self, name: str, request: Request, session: UiSession,  # type: ignore[type-arg]
                      api: Api) -> Response[str]:
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "triggering a run")
        view = await commands.workflow(api, session.tenant, name)
        values = {k: v[-1] for k, v in form.items()}
        try:
            data = read_input(view.spec.get("input_schema"), form)
            metadata = read_metadata(values.get("metadata", ""))
            priority = int(values["priority"]) if values.get("priority") else None
            created = await commands.trigger(api, session.principal, name, data, metadata,
                                             priority)
        except FormError as exc:
            return await self._render(api, session, view, values, str(exc))
        except ValueError:
            return await self._render(api, session, view, values, "priority must be 1, 2 or 3")
        except HTTPException as exc:
            if exc.status_code >= 500:
                raise
            return await self._render(api, session, view, values, exc.detail)
        except (LimitExceeded, RepoError) as exc:
            return await self._render(api, session, view, values, str(exc))
        notice = urlencode({"notice": f"Started a run of {name}."})
        return Redirect(f"/ui/runs/{created.run_id}?{notice}", status_code=303)

    @post("/{name:str}/rollback")
    async def rollback(self, name: str, request: Request, session: UiSession,  # type: ignore[type-arg]
                       api: Api) -> Response[str]:
        """Make a version current (the page asks for confirmation first)."""
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "rolling back a workflow")
        version_id = (form.get("version_id") or [""])[-1]
        try:
            done = await commands.rollback(api, session.principal, name, version_id)
        except (HTTPException, RepoError) as exc:
            detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
            notice = f"Not rolled back: {detail}"
        else:
            notice = (f"Version {done.id} is now current: new runs of {name} start on it;"
                      " runs already started keep their version.")
        return Redirect(f"/ui/workflows/{name}?{urlencode({'notice': notice})}", status_code=303)

    @post("/{name:str}/pause")
    async def pause(self, name: str, request: Request, session: UiSession,  # type: ignore[type-arg]
                    api: Api) -> Response[str]:
        """Pause the workflow in the mode the form names (queue or drop)."""
        form = await check_csrf(request, session)
        require_scope(session, Scope.WRITE, "pausing a workflow")
        mode = (form.get("mode") or ["queue"])[-1]
        try:
            done = await commands.pause(api, session.principal, name, mode)
        except RepoError as exc:
            notice = f"Not paused: {exc}"
        else:
            notice = (f"{name} is paused ({done.mode}): "
                      + ("new runs wait for the resume." if done.mode == "queue" else
                         "API triggers are refused, event and cron triggers skipped.")
                      + " Runs already started go on.")
        return Redirect(f"/ui/workflows/{name}?{urlencode({'notice': notice})}", status_code=303)

    @post("/{name:str}/resume")
    async def resume(self, name: str, request: Request, session: UiSession,  # type: ignore[type-arg]
                     api: Api) -> Response[str]:
        form = await check_csrf(request, session)
        del form
        require_scope(session, Scope.WRITE, "resuming a workflow")
        try:
            done = await commands.resume(api, session.principal, name)
        except RepoError as exc:
            notice = f"Not resumed: {exc}"
        else:
            notice = f"{name} is resumed: {done.held} held run(s) start now."
        return Redirect(f"/ui/workflows/{name}?{urlencode({'notice': notice})}", status_code=303)
