"""API tokens (`admin` scope): create (the secret is shown once), list, revoke.

A revocation is committed, then broadcast so every API and dispatcher process drops the token
at once (their caches re-check within `tokens.CACHE_TTL_S` should the broadcast be lost); a
worker connected with it is disconnected with UNAUTHENTICATED.
"""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from libs.common.tokens import Scope
from services.api.actions import tokens
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.tokens import TokenCreated, TokenIn, TokenView


class TokenController(Controller):
    path = "/tokens"
    tags = ["tokens"]
    guards = [requires(Scope.ADMIN)]

    @post("/", status_code=HTTP_201_CREATED, operation_id="createToken")
    async def create(self, data: TokenIn, api: Api, caller: Caller) -> TokenCreated:
        """Create a token with `scopes` (admin, write, read, worker). The secret is returned
        in this response only."""
        return await tokens.create_token(api, caller, data)

    @get("/", operation_id="listTokens")
    async def list_tokens(
        self, tenant: Tenant, api: Api, include_revoked: bool = False
    ) -> list[TokenView]:
        """The tenant's tokens (never their secrets)."""
        return await tokens.list_tokens(api, tenant, include_revoked)

    @get("/{token_id:str}", operation_id="getToken", responses=errors(404))
    async def get_token(self, token_id: str, tenant: Tenant, api: Api) -> TokenView:
        return await tokens.get_token(api, tenant, token_id)

    @delete("/{token_id:str}", status_code=HTTP_204_NO_CONTENT, operation_id="revokeToken",
            responses=errors(404))
    async def revoke(self, token_id: str, api: Api, caller: Caller) -> None:
        """Revoke a token: within 2 s no API or dispatcher process accepts it."""
        await tokens.revoke_token(api, caller, token_id)
