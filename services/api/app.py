"""The Litestar application: routes, dependencies and OpenAPI (served at /schema)."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Litestar, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler

from services.api.auth import provide_tenant
from services.api.routes.analytics import AnalyticsController
from services.api.routes.crons import CronController, ScheduledController
from services.api.routes.events import EventController
from services.api.routes.filters import FilterController
from services.api.routes.rate_limits import RateLimitController
from services.api.routes.runs import RunController
from services.api.routes.workflows import WorkflowController
from services.api.state import ApiState
from services.api.ui import ui_router


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
        openapi_config=OpenAPIConfig(title="Ratchet API", version="0.1.0", path="/schema"),
        request_max_body_size=api.settings.max_request_bytes,
    )
