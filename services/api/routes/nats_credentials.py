"""NATS credentials for a tenant: publish its own events straight to NATS, nothing else.

The API signs a short-lived user JWT with the application account's signing key
(libs.common.natsauth); nats-server verifies it on connect and enforces its permissions, so no
Ratchet process sits in the path of a tenant's connection. The secret seed is returned once and
never stored: asking again issues a new, independent credential.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from litestar import Controller, post
from litestar.exceptions import ClientException, HTTPException
from litestar.status_codes import HTTP_201_CREATED, HTTP_503_SERVICE_UNAVAILABLE
from msgspec import Meta

from libs.common import natsauth
from libs.common.tokens import Scope
from services.api.auth import Api, Tenant, requires
from services.api.schemas import errors


class NatsCredentialsIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Lifetime in seconds; capped by the server's NATS_TENANT_CREDS_TTL_S (also the default).
    ttl_s: Annotated[float, Meta(gt=0)] | None = None


class NatsCredentials(msgspec.Struct, kw_only=True):
    url: str
    account: str
    jwt: str
    seed: str
    # `jwt` and `seed` as a .creds file: `nats.connect(url, user_credentials=path)`.
    creds: str
    # Pass as nats.connect(inbox_prefix=...): replies (JetStream publish acks) arrive only there.
    inbox_prefix: str
    publish: list[str]
    subscribe: list[str]
    expires_at: str


@functools.cache
def _issuer(account: str, seed_file: str) -> natsauth.Issuer:
    with open(seed_file) as f:
        return natsauth.Issuer(f.read(), account)


class NatsCredentialsController(Controller):
    guards = [requires(Scope.WRITE)]
    path = "/nats-credentials"
    tags = ["nats"]

    @post("/", status_code=HTTP_201_CREATED, operation_id="issueNatsCredentials",
          responses=errors(503))
    async def issue(
        self, tenant: Tenant, api: Api, data: NatsCredentialsIn | None = None
    ) -> NatsCredentials:
        """Issue NATS credentials that may publish only `evt.<tenant>.>` (returned once)."""
        s = api.settings
        if not (s.nats_account and s.nats_signing_seed_file):
            raise HTTPException(
                "this server issues no NATS credentials: NATS_ACCOUNT and "
                "NATS_SIGNING_SEED_FILE are not set",
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )
        ttl_s = s.nats_tenant_creds_ttl_s
        if data is not None and data.ttl_s is not None:
            if not 0 < data.ttl_s <= ttl_s:
                raise ClientException(f"ttl_s must be in (0, {ttl_s:g}]")
            ttl_s = data.ttl_s
        issued = _issuer(s.nats_account, s.nats_signing_seed_file).tenant(tenant, ttl_s)
        assert issued.expires_at is not None  # a tenant credential always expires
        return NatsCredentials(
            url=s.nats_public_url or s.nats_url,
            account=s.nats_account,
            jwt=issued.jwt,
            seed=issued.seed,
            creds=issued.creds,
            inbox_prefix=natsauth.tenant_inbox_prefix(tenant),
            publish=list(issued.permissions.publish),
            subscribe=list(issued.permissions.subscribe),
            expires_at=datetime.fromtimestamp(issued.expires_at, UTC).isoformat(),
        )
