"""The public endpoint of incoming webhooks: `POST /hooks/{tenant}/{name}`.

No API token: each hook verifies requests with its own scheme (GitHub, Stripe or Slack
signatures, a generic HMAC, basic auth or an API-key header; services/api/actions/hook_auth.py).
Every request is logged on the hook, whatever it got.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.openapi.datastructures import ResponseSpec

from services.api.actions import webhooks
from services.api.auth import api_state
from services.api.schemas import errors
from services.api.schemas.webhooks import HookAccepted, SlackChallenge

_RESPONSES = {
    200: ResponseSpec(data_container=SlackChallenge, generate_examples=False,
                      description="Slack's url_verification challenge, answered"),
    202: ResponseSpec(data_container=HookAccepted, generate_examples=False,
                      description="Verified and pushed as an event"),
    **errors(400, 401, 403, 404, 413, 429),
}


class HookController(Controller):
    path = "/hooks"
    tags = ["webhooks"]

    @post("/{tenant_id:str}/{name:str}", operation_id="receiveWebhook", responses=_RESPONSES,
          status_code=202, security=[])
    async def receive(
        self, tenant_id: str, name: str, request: Request[Any, Any, Any]
    ) -> Response[dict[str, Any]]:
        """Receive a provider's request (JSON body). Bad credentials 401/403 (a signed
        timestamp too far from now is 403), a body that is not JSON 400, an unknown hook 404."""
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = await webhooks.receive(api_state(request), tenant_id, name, headers, body)
        return Response(answer.body, status_code=answer.status)
