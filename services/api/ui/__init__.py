"""The dashboard: server-rendered pages under /ui, live by Server-Sent Events.

`ui_router` is all the app registers. Pages resolve their tenant from the session cookie the
way REST handlers do from a bearer token, read through the REST handlers (`commands`) and
`queries`, and render Jinja2 templates; htmx (vendored in static/) swaps in the fragments the
live streams push.
"""

from __future__ import annotations

from html import escape

from litestar import Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from services.api.ui.controllers.analytics import AnalyticsPages
from services.api.ui.controllers.live import LiveStreams
from services.api.ui.controllers.login import LoginPages
from services.api.ui.controllers.operate import OperatePages
from services.api.ui.controllers.runs import RunPages
from services.api.ui.controllers.workflows import WorkflowPages
from services.api.ui.render import STATIC, page
from services.api.ui.session import LoginRequired, provide_session


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/ui")


@get("/ui", include_in_schema=False)
async def home() -> Redirect:
    return Redirect("/ui/runs")


def _login_required(request: Request, exc: LoginRequired) -> Response[str]:  # type: ignore[type-arg]
    target = "/ui/login"
    if request.headers.get("hx-request"):
        # An htmx fragment request: a redirect would be swapped into the page; ask htmx to
        # navigate instead.
        return Response("", status_code=200, headers={"HX-Redirect": target})
    return Redirect(target)


def _http_error(request: Request, exc: HTTPException) -> Response[str]:  # type: ignore[type-arg]
    """Errors as a page (or, for htmx, a message fragment) rather than JSON."""
    if request.headers.get("hx-request"):
        return Response(f'<p class="error" role="alert">{escape(exc.detail)}</p>',
                        status_code=exc.status_code, media_type="text/html")
    return page("error.html", status_code=exc.status_code, status=exc.status_code,
                message=exc.detail, session=None, nav="")


ui_router = Router(
    path="/",
    route_handlers=[
        root, home, LoginPages, RunPages, WorkflowPages, OperatePages, AnalyticsPages,
        LiveStreams,
        create_static_files_router(path="/ui/static", directories=[STATIC],
                                   include_in_schema=False),
    ],
    dependencies={"session": Provide(provide_session)},
    exception_handlers={LoginRequired: _login_required, HTTPException: _http_error},
    include_in_schema=False,
)

__all__ = ["ui_router"]
