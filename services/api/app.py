"""The Litestar application: routes, dependencies and OpenAPI (served at /schema)."""

from __future__ import annotations

from collections.abc import Sequence

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_410_GONE,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from litestar.types import ControllerRouterHandler

from libs.common.limits import LimitExceeded
from libs.common.payloads import PayloadTooLarge
from services.api.auth import provide_principal, provide_tenant
from services.api.contract import (
    ClosedStructSchemaPlugin,
    check_json_body,
    describe_common_errors,
    finish_document,
    openapi_config,
)
from services.api.repos.errors import (
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NotFound,
    RepoError,
    TooLarge,
    TooMany,
    Unavailable,
)
from services.api.routes.admin import AdminController
from services.api.routes.alerts import AlertController
from services.api.routes.analytics import AnalyticsController
from services.api.routes.audit import AuditController
from services.api.routes.crons import CronController, ScheduledController
from services.api.routes.events import EventController
from services.api.routes.filters import FilterController
from services.api.routes.hooks import HookController
from services.api.routes.interaction import RunInteractionController, WaitpointController
from services.api.routes.limits import LimitController
from services.api.routes.logs import LogController
from services.api.routes.nats_credentials import NatsCredentialsController
from services.api.routes.payloads import (
    ENVELOPE_BYTES,
    PayloadController,
    on_body_too_large,
    on_payload_too_large,
)
from services.api.routes.rate_limits import RateLimitController
from services.api.routes.runs import RunController
from services.api.routes.streams import StreamController
from services.api.routes.tokens import TokenController
from services.api.routes.webhooks import (
    DeliveryController,
    SigningSecretController,
    WebhookController,
)
from services.api.routes.workflows import VERSIONS_DOC, WorkflowController
from services.api.state import ApiState
from services.api.ui import ui_router
from services.api.ui.controllers.waitpoint import PublicWaitpointController

ERRORS_DOC = """\
## Errors

Every error is a JSON `ErrorBody`: `status_code`, a `detail` for people and, for some, an
`extra` for programs (the invalid fields of a 400, the `field` of a 422). Authenticate with
`Authorization: Bearer <token>`: without a known token every operation answers 401. Request
bodies are read with JSON's types as the schema gives them (`"5"` is not an integer). Text
anywhere in a request cannot contain the NUL character (U+0000): it is a 400.
"""

API_DESCRIPTION = "Ratchet: durable tasks and DAG workflows.\n\n" + VERSIONS_DOC + "\n" + ERRORS_DOC

_REPO_STATUS: dict[type[RepoError], int] = {
    NotFound: HTTP_404_NOT_FOUND,
    Conflict: HTTP_409_CONFLICT,
    Invalid: HTTP_400_BAD_REQUEST,
    Unavailable: HTTP_503_SERVICE_UNAVAILABLE,
    TooMany: HTTP_429_TOO_MANY_REQUESTS,
    TooLarge: HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    Forbidden: HTTP_403_FORBIDDEN,
    Gone: HTTP_410_GONE,
}


def _repo_error(_: Request, exc: Exception) -> Response[dict[str, object]]:  # type: ignore[type-arg]
    """A repository's domain error as the same JSON body Litestar gives its HTTP errors."""
    status = next(
        (code for cls, code in _REPO_STATUS.items() if isinstance(exc, cls)), HTTP_400_BAD_REQUEST
    )
    body: dict[str, object] = {"status_code": status, "detail": str(exc)}
    if isinstance(exc, RepoError) and exc.extra is not None:
        body["extra"] = exc.extra
    return Response(body, status_code=status)


def _limit_exceeded(_: Request, exc: Exception) -> Response[dict[str, object]]:  # type: ignore[type-arg]
    """429 naming the limit, with Retry-After: nothing of the request was accepted."""
    assert isinstance(exc, LimitExceeded)
    body: dict[str, object] = {
        "status_code": HTTP_429_TOO_MANY_REQUESTS, "detail": str(exc),
        "extra": {"limit": exc.limit.value, "value": exc.value},
    }
    return Response(body, status_code=HTTP_429_TOO_MANY_REQUESTS,
                    headers={"Retry-After": str(exc.retry_after_s)})


@get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def create_app(
    api: ApiState, extra_routes: Sequence[ControllerRouterHandler] = ()
) -> Litestar:
    def provide_api() -> ApiState:
        return api

    app = Litestar(
        route_handlers=[
            healthz, WorkflowController, RunController, AnalyticsController,
            RunInteractionController, WaitpointController, PublicWaitpointController,
            EventController, FilterController, CronController, ScheduledController,
            RateLimitController, TokenController, LimitController, AuditController,
            NatsCredentialsController, AdminController, LogController, StreamController,
            PayloadController,
            WebhookController, HookController, DeliveryController, SigningSecretController,
            AlertController,
            ui_router,  # the dashboard: /ui, and / redirecting there
            *extra_routes,
        ],
        dependencies={
            "api": Provide(provide_api, use_cache=True, sync_to_thread=False),
            "tenant": Provide(provide_tenant),
            "caller": Provide(provide_principal),
        },
        # Scope guards (services/api/auth.py) find the ApiState here.
        state=State({"api": api}),
        exception_handlers={
            RepoError: _repo_error, LimitExceeded: _limit_exceeded,
            PayloadTooLarge: on_payload_too_large, RequestEntityTooLarge: on_body_too_large,
        },
        before_request=check_json_body,
        openapi_config=openapi_config(API_DESCRIPTION),
        plugins=[ClosedStructSchemaPlugin()],
        # A run input or event payload may be up to RATCHET_MAX_PAYLOAD_BYTES; the routes
        # measure the payload itself and answer a 413 naming both numbers.
        request_max_body_size=max(
            api.settings.max_request_bytes, api.settings.max_payload_bytes + ENVELOPE_BYTES
        ),
    )
    describe_common_errors(app)
    finish_document(app)
    return app
