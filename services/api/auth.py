"""Who is calling and what they may do: bearer token → Principal, scope guards.

Every route declares its scope with a guard, `guards=[requires(Scope.X)]`, on its controller or
handler (tests/integration/test_tokens.py fails for a route without one). The guard resolves the
token once per request (the `Authorization: Bearer` header, or the dashboard's HttpOnly
`ratchet_token` cookie), checks the scope (403 naming it) and the tenant's request-size limit,
and leaves the principal on the request for the `tenant` and `principal` dependencies.
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from litestar.types import Guard

from libs.common.limits import Limit
from libs.common.tokens import Principal, Scope
from services.api.state import ApiState

TOKEN_COOKIE = "ratchet_token"
_PRINCIPAL_KEY = "ratchet_principal"


def api_state(connection: ASGIConnection[Any, Any, Any, Any]) -> ApiState:
    api: ApiState = connection.app.state["api"]
    return api


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip() or None
    return connection.cookies.get(TOKEN_COOKIE) or None


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The request's principal (resolved once per request); 401 without a live token."""
    cached = connection.scope.get(_PRINCIPAL_KEY)
    if isinstance(cached, Principal):
        return cached
    token = bearer_token(connection)
    if token is None:
        raise NotAuthorizedException("missing bearer token (Authorization: Bearer <token>)")
    principal = await api_state(connection).tokens.principal(token)
    if principal is None:
        raise NotAuthorizedException("unknown, revoked or expired token")
    connection.scope[_PRINCIPAL_KEY] = principal  # type: ignore[literal-required]
    return principal


def requires(*scopes: Scope) -> Guard:
    """A guard admitting tokens holding any of `scopes` (admin ⊃ write ⊃ read)."""
    if not scopes:
        raise ValueError("requires() needs at least one scope")

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        principal = await authenticate(connection)
        if not any(principal.allows(s) for s in scopes):
            # Name what the route itself asks for (its handler's guard comes last), not the
            # controller's broader default: "lacks 'write'" is what the caller must fix.
            wanted = _route_scopes(handler) or scopes
            needed = " or ".join(f"'{s.value}'" for s in wanted)
            raise PermissionDeniedException(
                f"this token lacks the {needed} scope", extra={"required_scope": wanted[0].value}
            )
        await _check_body_size(connection, principal)

    guard.ratchet_scopes = scopes  # type: ignore[attr-defined]
    return guard


def declared_scopes(handler: BaseRouteHandler) -> tuple[Scope, ...]:
    """The scopes a handler's guards require (empty: the route declares none)."""
    found: list[Scope] = []
    for guard in handler.resolve_guards():
        found.extend(getattr(guard, "ratchet_scopes", ()))
    return tuple(found)


def _route_scopes(handler: BaseRouteHandler) -> tuple[Scope, ...]:
    for guard in reversed(handler.resolve_guards()):
        scopes: tuple[Scope, ...] = getattr(guard, "ratchet_scopes", ())
        if scopes:
            return scopes
    return ()


async def _check_body_size(
    connection: ASGIConnection[Any, Any, Any, Any], principal: Principal
) -> None:
    """The tenant's payload_bytes limit on the declared body size. A body without a length
    (chunked) is still bounded by the process-wide max_request_bytes."""
    length = connection.headers.get("content-length")
    if not length or not length.isdigit():
        return
    limits = await api_state(connection).limits.get(principal.tenant)
    if limits.payload_bytes is not None and int(length) > limits.payload_bytes:
        raise HTTPException(
            status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"request body of {length} bytes is over {Limit.PAYLOAD_BYTES.value}="
            f"{limits.payload_bytes}",
            extra={"limit": Limit.PAYLOAD_BYTES.value, "value": limits.payload_bytes},
        )


async def provide_principal(request: Request) -> Principal:  # type: ignore[type-arg]
    return await authenticate(request)


async def provide_tenant(request: Request) -> str:  # type: ignore[type-arg]
    return (await authenticate(request)).tenant


Api = NamedDependency[ApiState]
Tenant = NamedDependency[str]
Caller = NamedDependency[Principal]
