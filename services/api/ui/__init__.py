"""The dashboard: server-rendered pages under /ui, live by Server-Sent Events.

`ui_router` is all the app registers. Pages resolve their principal from the session cookie
the way REST handlers do from a bearer token (`session`), act through the REST handlers
(`commands`), read through the API's repositories, and render Jinja2 templates; htmx
(vendored in static/) swaps in the fragments the live streams push.
"""

from __future__ import annotations

from html import escape

from litestar import Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from libs.common.limits import LimitExceeded
from services.api.repos import Conflict, Invalid, NotFound, RepoError, Unavailable
from services.api.repos.errors import Forbidden, Gone, TooLarge, TooMany
from services.api.ui.controllers.analytics import AnalyticsPages
from services.api.ui.controllers.hooks import AlertPages, WebhookPages
from services.api.ui.controllers.live import LiveStreams
from services.api.ui.controllers.login import LoginPages
from services.api.ui.controllers.operate import OperatePages
from services.api.ui.controllers.runs import RunPages
from services.api.ui.controllers.settings import SettingsPages
from services.api.ui.controllers.waitpoints import WaitpointPages
from services.api.ui.controllers.workflows import WorkflowPages
from services.api.ui.render import STATIC, page
from services.api.ui.session import COOKIE, ENDED_URL, LoginRequired, provide_session


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/ui")


@get("/ui", include_in_schema=False)
async def home() -> Redirect:
    return Redirect("/ui/runs")


def _login_required(request: Request, exc: LoginRequired) -> Response[str]:  # type: ignore[type-arg]
    target = ENDED_URL if exc.ended else "/ui/login"
    response: Response[str]
    if "text/event-stream" in request.headers.get("accept", ""):
        # A live stream (re)connecting after its token died: EventSource cannot follow a
        # redirect to a page, so tell the page (static/dashboard.js) to go to the login.
        response = Response(f"event: session-ended\ndata: {target}\n\n", status_code=200,
                            media_type="text/event-stream")
    elif request.headers.get("hx-request"):
        # An htmx fragment request: a redirect would be swapped into the page; ask htmx to
        # navigate instead.
        response = Response("", status_code=200, headers={"HX-Redirect": target})
    else:
        response = Redirect(target)
    if exc.ended:
        response.delete_cookie(COOKIE, path="/ui")
    return response


def _http_error(request: Request, exc: HTTPException) -> Response[str]:  # type: ignore[type-arg]
    """Errors as a page (or, for htmx, a message fragment) rather than JSON."""
    return _error_page(request, exc.status_code, exc.detail)


_DOMAIN_STATUS: dict[type[Exception], int] = {
    NotFound: 404, Conflict: 409, Invalid: 400, Unavailable: 503, LimitExceeded: 429,
    TooMany: 429, TooLarge: 413, Forbidden: 403, Gone: 410,
}


def _domain_error(request: Request, exc: Exception) -> Response[str]:  # type: ignore[type-arg]
    """A repository's or a limit's error, shown as the REST API would word it."""
    status = next((code for cls, code in _DOMAIN_STATUS.items() if isinstance(exc, cls)), 400)
    return _error_page(request, status, str(exc))


def _error_page(request: Request, status: int, message: str) -> Response[str]:  # type: ignore[type-arg]
    if request.headers.get("hx-request"):
        return Response(f'<p class="error" role="alert">{escape(message)}</p>',
                        status_code=status, media_type="text/html")
    return page("error.html", status_code=status, status=status, message=message,
                session=None, nav="")


ui_router = Router(
    path="/",
    route_handlers=[
        root, home, LoginPages, RunPages, WorkflowPages, OperatePages, AnalyticsPages,
        WebhookPages, AlertPages,
        SettingsPages, LiveStreams, WaitpointPages,
        create_static_files_router(path="/ui/static", directories=[STATIC],
                                   include_in_schema=False),
    ],
    dependencies={"session": Provide(provide_session)},
    exception_handlers={LoginRequired: _login_required, HTTPException: _http_error,
                        RepoError: _domain_error, LimitExceeded: _domain_error},
    include_in_schema=False,
)

__all__ = ["ui_router"]
