"""NATS JWTs and role permissions (libs.common.natsauth) and the auth/TLS settings checks.
The server-side behaviour is proved in tests/integration/test_nats_auth.py."""

from __future__ import annotations

import nkeys
import pytest

from libs.common import natsauth
from libs.common.settings import load_settings


def test_user_jwt_is_signed_by_the_signing_key_and_carries_permissions() -> None:
    account = natsauth.new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    signing = natsauth.new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    issuer = natsauth.Issuer(natsauth.seed_of(signing), natsauth.public_key(account))
    creds = issuer.tenant("acme", expires_s=60)
    head, body, sig = creds.jwt.split(".")
    assert signing.verify(f"{head}.{body}".encode(), natsauth._b64_decode(sig))
    claims = natsauth.decode_claims(creds.jwt)
    assert claims["iss"] == natsauth.public_key(signing)
    assert claims["sub"] == natsauth.public_key(natsauth.keypair(creds.seed))
    assert claims["nats"]["issuer_account"] == natsauth.public_key(account)
    assert claims["nats"]["pub"] == {"allow": ["evt.acme.>"]}
    assert claims["nats"]["sub"] == {"allow": ["_INBOX_acme.>"]}
    assert claims["exp"] - claims["iat"] == 60 == creds.expires_at - claims["iat"]
    assert creds.jwt in creds.creds and creds.seed in creds.creds


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="tenant id"):
        natsauth.tenant_permissions("Acme.*")
    with pytest.raises(ValueError, match="not an nkey seed"):
        natsauth.keypair("nonsense")
    with pytest.raises(ValueError, match="unknown service role"):
        natsauth.Issuer(
            natsauth.seed_of(natsauth.new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)),
            natsauth.public_key(natsauth.new_keypair(nkeys.PREFIX_BYTE_ACCOUNT)),
        ).service("root")
    with pytest.raises(ValueError, match="at least one"):
        natsauth.user_jwt(
            "U" * 56, "x", natsauth.Permissions(publish=(), subscribe=("a",)),
            signing_key=natsauth.new_keypair(nkeys.PREFIX_BYTE_ACCOUNT),
            account_public_key="A" * 56,
        )


def test_no_service_may_subscribe_to_internal_streams_directly() -> None:
    for role, perms in natsauth.SERVICE_ROLES.items():
        for subject in ("task.>", "cmd.>", "dsp.>", "evt.>", ">"):
            assert subject not in perms.subscribe, (role, subject)
    assert "cmd.>" not in natsauth.SERVICE_ROLES["dispatcher"].publish


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_tls_cert": "c.pem"}, "API_TLS_CERT and API_TLS_KEY"),
        ({"grpc_tls_key": "k.pem"}, "GRPC_TLS_CERT and GRPC_TLS_KEY"),
        ({"grpc_tls_client_ca": "ca.pem"}, "GRPC_TLS_CLIENT_CA"),
        ({"nats_creds": "a.creds", "nats_token": "t"}, "only one NATS auth"),
        ({"nats_user": "u"}, "NATS_USER and NATS_PASSWORD"),
    ],
)
def test_half_configured_auth_or_tls_fails_at_startup(
    overrides: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(**overrides)
