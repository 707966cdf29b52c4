"""API tokens (`admin` scope): create (the secret is shown once), list, revoke.

A revocation is committed, then broadcast so every API and dispatcher process drops the token
at once (their caches re-check within `tokens.CACHE_TTL_S` should the broadcast be lost); a
worker connected with it is disconnected with UNAUTHENTICATED.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.exceptions import ClientException, NotFoundException
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT
from msgspec import Meta

from libs.common import tokens
from libs.common.audit import AuditEntry
from libs.common.tokens import Principal, Scope
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import errors

MAX_NAME_CHARS = 200
MAX_EXPIRES_IN_S = 10 * 365 * 24 * 3600


class TokenIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"\S",
                              description="shown in the audit log; not blank")]
    scopes: Annotated[list[Scope], Meta(min_length=1)]
    # None: never expires
    expires_in_s: Annotated[int, Meta(ge=1, le=MAX_EXPIRES_IN_S)] | None = None


class TokenView(msgspec.Struct, kw_only=True):
    id: str
    name: str
    scopes: list[str]
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class TokenCreated(msgspec.Struct, kw_only=True):
    """`token` is the secret: it is shown here once and stored only as a hash."""

    id: str
    name: str
    scopes: list[str]
    expires_at: str | None
    token: str


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _view(row: Any) -> TokenView:
    return TokenView(
        id=row["id"], name=row["name"], scopes=list(row["scopes"]),
        created_at=row["created_at"].isoformat(), expires_at=_iso(row["expires_at"]),
        revoked_at=_iso(row["revoked_at"]),
    )


def audit_entry(caller: Principal, action: str, target: str | None = None,
                detail: dict[str, Any] | None = None) -> AuditEntry:
    return AuditEntry(
        tenant=caller.tenant, action=action, token_id=caller.token_id,
        token_name=caller.token_name, target=target, detail=detail or {},
    )


class TokenController(Controller):
    path = "/tokens"
    tags = ["tokens"]
    guards = [requires(Scope.ADMIN)]

    @post("/", status_code=HTTP_201_CREATED, operation_id="createToken")
    async def create(self, data: TokenIn, api: Api, caller: Caller) -> TokenCreated:
        """Create a token with `scopes` (admin, write, read, worker). The secret is returned
        in this response only."""
        name = data.name.strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise ClientException(f"name must be 1-{MAX_NAME_CHARS} characters")
        try:
            scopes = tokens.parse_scopes(data.scopes)
        except ValueError as exc:
            raise ClientException(str(exc)) from exc
        expires_at = None
        if data.expires_in_s is not None:
            if not 1 <= data.expires_in_s <= MAX_EXPIRES_IN_S:
                raise ClientException(f"expires_in_s must be between 1 and {MAX_EXPIRES_IN_S}")
            expires_at = datetime.now(UTC) + timedelta(seconds=data.expires_in_s)
        entry = audit_entry(caller, "token.create", detail={
            "name": name, "scopes": [s.value for s in scopes], "expires_at": _iso(expires_at),
        })
        secret, row = await api.token_repo.create(caller.tenant, name, scopes, expires_at, entry)
        return TokenCreated(
            id=row["id"], name=row["name"], scopes=list(row["scopes"]),
            expires_at=_iso(row["expires_at"]), token=secret,
        )

    @get("/", operation_id="listTokens")
    async def list_tokens(
        self, tenant: Tenant, api: Api, include_revoked: bool = False
    ) -> list[TokenView]:
        """The tenant's tokens (never their secrets)."""
        return [_view(r) for r in await api.token_repo.list_tokens(tenant, include_revoked)]

    @get("/{token_id:str}", operation_id="getToken", responses=errors(404))
    async def get_token(self, token_id: str, tenant: Tenant, api: Api) -> TokenView:
        row = await api.token_repo.get(tenant, token_id)
        if row is None:
            raise NotFoundException(f"token {token_id!r} not found")
        return _view(row)

    @delete("/{token_id:str}", status_code=HTTP_204_NO_CONTENT, operation_id="revokeToken",
            responses=errors(404))
    async def revoke(self, token_id: str, api: Api, caller: Caller) -> None:
        """Revoke a token: within 2 s no API or dispatcher process accepts it."""
        entry = audit_entry(caller, "token.revoke", target=token_id)
        if not await api.token_repo.revoke(caller.tenant, token_id, entry):
            raise NotFoundException(f"token {token_id!r} not found")
        api.tokens.forget(token_id)
        await tokens.announce_revoked(api.nc, token_id)
