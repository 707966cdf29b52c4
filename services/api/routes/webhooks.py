"""Webhooks: manage incoming hooks and read their request logs; the outgoing side's signing
secret and delivery log (run callbacks, alert messages)."""

from __future__ import annotations

from typing import Literal

from litestar import Controller, delete, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_204_NO_CONTENT

from libs.common.tokens import Scope
from services.api.actions import webhooks
from services.api.auth import Api, Caller, Tenant, requires
from services.api.schemas import errors
from services.api.schemas.webhooks import (
    HookDeliveryView,
    OutboundDeliveryView,
    SigningSecretView,
    WebhookIn,
    WebhookView,
)


class WebhookController(Controller):
    path = "/webhooks"
    tags = ["webhooks"]
    guards = [requires(Scope.READ)]

    @post("/", status_code=HTTP_201_CREATED, guards=[requires(Scope.WRITE)],
          operation_id="createWebhook", responses=errors(409))
    async def create(self, data: WebhookIn, tenant: Tenant, api: Api, caller: Caller) -> WebhookView:
        """Create a public endpoint, `POST /hooks/{tenant}/{name}`, that verifies requests
        with the source's scheme and turns each into an event. 409 if the name is taken."""
        return await webhooks.create_hook(api, caller, data)

    @get("/", operation_id="listWebhooks")
    async def list_hooks(self, tenant: Tenant, api: Api) -> list[WebhookView]:
        return await webhooks.list_hooks(api, tenant)

    @get("/{name:str}", operation_id="getWebhook", responses=errors(404))
    async def get_hook(self, name: str, tenant: Tenant, api: Api) -> WebhookView:
        return await webhooks.get_hook(api, tenant, name)

    @delete("/{name:str}", status_code=HTTP_204_NO_CONTENT, guards=[requires(Scope.WRITE)],
            operation_id="deleteWebhook", responses=errors(404))
    async def delete_hook(self, name: str, tenant: Tenant, api: Api, caller: Caller) -> None:
        await webhooks.delete_hook(api, caller, name)

    @get("/{name:str}/deliveries", operation_id="listWebhookDeliveries", responses=errors(404))
    async def deliveries(
        self, name: str, tenant: Tenant, api: Api,
        limit: int = Parameter(default=100, ge=1, le=100),
    ) -> list[HookDeliveryView]:
        """The hook's last requests (up to 100 are kept), newest first: the status answered,
        the outcome and the event id. `_unknown` lists requests to hooks that do not exist."""
        return await webhooks.hook_requests(api, tenant, name, limit)


class DeliveryController(Controller):
    path = "/deliveries"
    tags = ["webhooks"]
    guards = [requires(Scope.READ)]

    @get("/", operation_id="listDeliveries")
    async def list_deliveries(
        self, tenant: Tenant, api: Api,
        kind: Literal["callback", "alert"] | None = None,
        run_id: str | None = None, rule_id: str | None = None,
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> list[OutboundDeliveryView]:
        """Outgoing deliveries, newest first: run callbacks and alert messages, each with
        its attempts, last answer and whether it is pending, delivered or failed."""
        return await webhooks.outbound_deliveries(api, tenant, kind=kind, run_id=run_id,
                                                  rule_id=rule_id, limit=limit)


class SigningSecretController(Controller):
    path = "/signing-secret"
    tags = ["webhooks"]
    guards = [requires(Scope.WRITE)]

    @get("/", operation_id="getSigningSecret")
    async def get_secret(self, tenant: Tenant, api: Api) -> SigningSecretView:
        """The key outgoing deliveries are signed with (`Ratchet-Signature`), made on first
        use."""
        return await webhooks.signing_secret(api, tenant)

    @post("/rotate", status_code=HTTP_201_CREATED, operation_id="rotateSigningSecret")
    async def rotate(self, tenant: Tenant, api: Api, caller: Caller) -> SigningSecretView:
        """Replace the signing key; deliveries sent from now on use the new one."""
        return await webhooks.rotate_signing_secret(api, caller)
