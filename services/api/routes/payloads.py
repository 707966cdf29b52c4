"""The short-lived transfer path for large payloads, and the API's own offloading.

`PUT /payloads/{scope_id}` streams a request body into the payload store under the caller's
tenant (the token says which, so a key is always tenant-prefixed) and answers the reference;
`GET /payloads/{blob_key}?size=` streams a blob back, only to the tenant that owns it. Workers
use both for outputs and inputs above `RATCHET_PAYLOAD_INLINE_BYTES`; neither route ever holds
a whole body in memory.

Offloading a large run input or event payload on the request path, and reading a reference
back, is `services.api.actions.offload`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, put
from litestar.exceptions import ClientException, NotFoundException
from litestar.params import Parameter
from litestar.response import Stream
from litestar.status_codes import HTTP_201_CREATED, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from libs.common.payloads import (
    InvalidPayloadKey,
    PayloadAccessDenied,
    PayloadNotFound,
    PayloadRef,
    PayloadTooLarge,
)
from libs.common.tokens import Scope
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors

# What libs/common/payloads accepts as a scope (a run id, or an event's scope).
ScopeIdParam = Annotated[str, Parameter(
    min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:=+-]*$",
    description="the run id (or event scope) the payload belongs to",
)]

# Room for the JSON around a payload in a request body (`{"input": ..., "metadata": ...}`):
# the body limit is the payload limit plus this, and the payload itself is measured exactly.
ENVELOPE_BYTES = 64 * 1024


class PayloadRefView(msgspec.Struct, kw_only=True):
    """Where an uploaded payload lives. Pass all three to read it back."""

    key: str
    sha256: str
    size: int


def too_large(size: int, limit: int, what: str = "payload") -> Response[dict[str, Any]]:
    """The 413 every oversized input gets: it names the size and the limit."""
    return Response(
        {
            "status_code": HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            "detail": f"{what} too large: {size} bytes, the limit is {limit} bytes "
                      "(RATCHET_MAX_PAYLOAD_BYTES)",
            "extra": {"size": size, "limit": limit},
        },
        status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


def on_payload_too_large(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, PayloadTooLarge)
    return too_large(exc.size_so_far, exc.limit)


def on_body_too_large(request: Request[Any, Any, Any], _: Exception) -> Response[dict[str, Any]]:
    """Litestar's own body limit, answered with the numbers instead of a bare 413."""
    limit = request.route_handler.resolve_request_max_body_size() or 0
    announced = request.headers.get("content-length", "")
    size = int(announced) if announced.isdigit() else limit + 1
    return too_large(size, limit, "request body")


class PayloadController(Controller):
    path = "/payloads"
    tags = ["payloads"]
    # Workers move their tasks' payloads; people with write access may too.
    guards = [requires(Scope.WRITE, Scope.WORKER)]

    @put(
        "/{scope_id:str}", status_code=HTTP_201_CREATED, operation_id="uploadPayload",
        responses=errors(413),
        # The store enforces RATCHET_MAX_PAYLOAD_BYTES while streaming (a clear 413).
        request_max_body_size=None,
    )
    async def upload(self, scope_id: ScopeIdParam, request: Request[Any, Any, Any], tenant: Tenant, api: Api
                     ) -> PayloadRefView:
        """Store the request body as a payload of `scope_id` (a run id); answers its reference.
        413 past RATCHET_MAX_PAYLOAD_BYTES, naming the size and the limit."""
        limit = api.settings.max_payload_bytes
        announced = request.headers.get("content-length", "")
        if announced.isdigit() and int(announced) > limit:
            raise PayloadTooLarge(int(announced), limit)
        try:
            ref = await api.store.put_stream(tenant, scope_id, _body(request), limit)
        except InvalidPayloadKey as exc:
            raise ClientException(str(exc)) from None
        return PayloadRefView(key=ref.key, sha256=ref.sha256, size=ref.size)

    @get("/blobs/{blob_key:path}", guards=[requires(Scope.READ, Scope.WORKER)],
         operation_id="downloadPayload", responses=errors(404))
    async def download(
        self, blob_key: str, tenant: Tenant, api: Api,
        size: int = Parameter(ge=0, description="the payload's size, from its reference"),
    ) -> Stream:
        """Stream a payload back. 404 for an unknown key or another tenant's."""
        key = blob_key.lstrip("/")
        try:
            sha = key.rsplit("/", 1)[-1]
            ref = PayloadRef(key, sha, size)
            store = api.store
            chunks = store.open(tenant, ref)
            first = await anext(chunks, b"")  # fails here, before the 200, if it cannot open
        except (InvalidPayloadKey, PayloadAccessDenied, PayloadNotFound):
            raise NotFoundException(f"payload {key!r} not found") from None
        return Stream(_then(first, chunks), media_type="application/octet-stream",
                      headers={"content-length": str(size)})


async def _body(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def _then(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
