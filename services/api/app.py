"""The Litestar application: routes, dependencies and OpenAPI (served at /schema)."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Litestar, Request, Response, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ControllerRouterHandler

from services.api.auth import provide_tenant
from services.api.repos import Conflict, Invalid, NotFound, RepoError, Unavailable
from services.api.routes.analytics import AnalyticsController
from services.api.routes.crons import CronController, ScheduledController
from services.api.routes.events import EventController
from services.api.routes.filters import FilterController
from services.api.routes.rate_limits import RateLimitController
from services.api.routes.runs import RunController
from services.api.routes.workflows import VERSIONS_DOC, WorkflowController
from services.api.state import ApiState
from services.api.ui import ui_router

API_DESCRIPTION = "Ratchet: durable tasks and DAG workflows.\n\n" + VERSIONS_DOC

_REPO_STATUS: dict[type[RepoError], int] = {
    NotFound: HTTP_404_NOT_FOUND,
    Conflict: HTTP_409_CONFLICT,
    Invalid: HTTP_400_BAD_REQUEST,
    Unavailable: HTTP_503_SERVICE_UNAVAILABLE,
}


def _repo_error(_: Request, exc: Exception) -> Response[dict[str, object]]:  # type: ignore[type-arg]
    """A repository's domain error as the same JSON body Litestar gives its HTTP errors."""
    status = next(
        (code for cls, code in _REPO_STATUS.items() if isinstance(exc, cls)), HTTP_400_BAD_REQUEST
    )
    return Response({"status_code": status, "detail": str(exc)}, status_code=status)


@get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def create_app(
    api: ApiState, extra_routes: Sequence[ControllerRouterHandler] = ()
) -> Litestar:
    def provide_api() -> ApiState:
        return api

    return Litestar(
        route_handlers=[
            healthz, WorkflowController, RunController, AnalyticsController,
            EventController, FilterController, CronController, ScheduledController,
            RateLimitController,
            ui_router,  # the dashboard: /ui, and / redirecting there
            *extra_routes,
        ],
        dependencies={
            "api": Provide(provide_api, use_cache=True, sync_to_thread=False),
            "tenant": Provide(provide_tenant),
        },
        exception_handlers={RepoError: _repo_error},
        openapi_config=OpenAPIConfig(
            title="Ratchet API", version="0.1.0", path="/schema", description=API_DESCRIPTION,
            use_handler_docstrings=True,
        ),
        request_max_body_size=api.settings.max_request_bytes,
    )
