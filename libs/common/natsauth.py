"""NATS decentralized auth: nkeys, JWTs and the permissions each identity gets.

The server runs in operator mode: an operator JWT, one system account and one application
account (`RATCHET`, JetStream enabled), preloaded through the server's memory resolver. Every
connection is a *user* of the application account, identified by a user JWT signed with the
account's signing key; the server checks the signature and enforces the permissions carried in
the JWT on every publish and subscribe, with no Ratchet process in the connect path.

Why hand-written JWT encoding: a NATS JWT is three base64url parts signed with an nkey (the
`nkeys` package, maintained by the NATS authors, does the ed25519 part). The only Python JWT
library for NATS on PyPI (`nats-jwt`) says of itself that it is untested and in development;
encoding the few claims used here is shorter than auditing it.

Permissions come from `libs.common.subjects`, so a new subject family fails the auth tests
until a role below is given it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nkeys

from libs.common import subjects

ACCOUNT_NAME = "RATCHET"
SYSTEM_ACCOUNT_NAME = "SYS"

# JetStream API and the subjects JetStream itself replies on or expects publishes to.
_JS_API = "$JS.API.>"
_JS_ACK = "$JS.ACK.>"
_JS_FC = "$JS.FC.>"
_INBOX = "_INBOX.>"
# The matcher (events) and the scheduler (crons) start runs; cancel and replay are the API's.
_RUN_TRIGGERS = subjects.cmd("*", "run.trigger")
# A cancelled parent run cancels its children (services/scheduler/engine/_children.py).
_RUN_CANCELS = subjects.cmd("*", "run.cancel")


def _kv(bucket: subjects.Bucket) -> str:
    return f"$KV.{bucket.value}.>"


@dataclass(frozen=True, slots=True)
class Permissions:
    """What a user may publish and subscribe to; `respond` lets it answer requests."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    respond: bool = False


# Each service's needs, from its code: every service provisions streams and KV buckets (so the
# JetStream API), acks what it consumes, dead-letters poison messages, and reads replies on its
# inbox. What differs is the application subjects.
_SERVICE_COMMON_PUB = (_JS_API, _JS_ACK, _JS_FC, subjects.dlq(">"))
_SERVICE_COMMON_SUB = (_INBOX,)

SERVICE_ROLES: Mapping[str, Permissions] = {
    # REST triggers and events; asks the replicator for OLAP reads; follows task changes and
    # workflow changes for live pages.
    "api": Permissions(
        publish=(
            *_SERVICE_COMMON_PUB, subjects.CMD_ALL, subjects.EVT_ALL, subjects.OLAP_QUERY,
            subjects.MATCHER_CHANGES, subjects.TOKEN_REVOKED,
        ),
        subscribe=(
            *_SERVICE_COMMON_SUB, subjects.TASK_CHANGES_ALL, subjects.MATCHER_CHANGES,
            subjects.TOKEN_REVOKED,
        ),
    ),
    # Consumes EVT, triggers runs, records match outcomes.
    "matcher": Permissions(
        publish=(*_SERVICE_COMMON_PUB, _RUN_TRIGGERS, subjects.TASK_MATCH_ALL),
        subscribe=(*_SERVICE_COMMON_SUB, subjects.MATCHER_CHANGES),
    ),
    # Consumes CMD and task reports, publishes state changes and assignments, cron triggers;
    # reads the worker registry.
    "scheduler": Permissions(
        publish=(
            *_SERVICE_COMMON_PUB, subjects.TASK_CHANGES_ALL, subjects.dsp(">"), _RUN_TRIGGERS,
            _RUN_CANCELS,
            _kv(subjects.Bucket.WORKERS),  # deletes the entries of workers it declared lost
        ),
        subscribe=_SERVICE_COMMON_SUB,
    ),
    # Consumes its DSP subject, publishes task reports, writes the worker registry.
    "dispatcher": Permissions(
        publish=(
            *_SERVICE_COMMON_PUB, subjects.TASK_REPORTS_ALL, _kv(subjects.Bucket.WORKERS),
            subjects.LOGS_ALL, subjects.CHUNKS_ALL,  # task log lines and stream chunks
        ),
        subscribe=(*_SERVICE_COMMON_SUB, subjects.TOKEN_REVOKED),
    ),
    # Consumes EVT and TASK into ClickHouse and answers OLAP queries (a reply, not a publish).
    "replicator": Permissions(
        publish=_SERVICE_COMMON_PUB,
        subscribe=(*_SERVICE_COMMON_SUB, subjects.OLAP_QUERY),
        respond=True,
    ),
}


def tenant_inbox_prefix(tenant: str) -> str:
    """A tenant's private inbox prefix: `_INBOX.>` would let it read every other client's
    replies (pull-consumer deliveries carry task data), so its replies come on its own prefix."""
    return f"_INBOX_{tenant}"


def tenant_permissions(tenant: str) -> Permissions:
    """Publish its own events; receive only the JetStream acks of those publishes."""
    if not subjects.valid_tenant(tenant):
        raise ValueError(f"tenant id {tenant!r} must be 1-64 chars of [a-z0-9_-]")
    return Permissions(
        publish=(subjects.evt(tenant, ">"),),
        subscribe=(f"{tenant_inbox_prefix(tenant)}.>",),
    )


# ---------------------------------------------------------------------------------- keys


def new_keypair(prefix: int) -> Any:
    """A fresh nkeys.KeyPair of the given kind (nkeys.PREFIX_BYTE_*)."""
    return nkeys.from_seed(nkeys.encode_seed(secrets.token_bytes(32), prefix))


def keypair(seed: str) -> Any:
    """The nkeys.KeyPair of a seed string (`SA...`, `SO...`, `SU...`); ValueError when bad."""
    try:
        return nkeys.from_seed(seed.strip().encode())
    except Exception as exc:
        raise ValueError(f"not an nkey seed: {exc!s}") from None


def public_key(kp: Any) -> str:
    return str(kp.public_key.decode())


def seed_of(kp: Any) -> str:
    return str(kp.seed.decode())


# ---------------------------------------------------------------------------------- JWTs


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_HEADER = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())


def encode_jwt(
    *, subject: str, name: str, nats: Mapping[str, Any], signer: Any, expires_s: float = 0
) -> str:
    """A NATS JWT (v2) for `subject`, signed by `signer` (an nkeys.KeyPair)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iat": now,
        "iss": public_key(signer),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    if expires_s > 0:
        claims["exp"] = now + int(expires_s)
    # jti: the hash of the claims, as the Go library computes it (unique per token).
    digest = hashlib.new("sha512_256", json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{_HEADER}.{body}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


def decode_claims(jwt: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (for display and tests; the server verifies)."""
    try:
        claims = json.loads(_b64_decode(jwt.split(".")[1]))
    except (IndexError, ValueError) as exc:
        raise ValueError(f"not a JWT: {exc!s}") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT: claims are not an object")
    return claims


_UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
_ACCOUNT_LIMITS = {**_UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1,
                   "leaf": -1}
# Non-zero storage is what turns JetStream on for an account; -1 is unlimited.
_JETSTREAM_LIMITS = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def operator_jwt(operator: Any, system_account: str, name: str = "ratchet") -> str:
    return encode_jwt(
        subject=public_key(operator), name=name, signer=operator,
        nats={"type": "operator", "system_account": system_account},
    )


def account_jwt(
    account: Any, operator: Any, name: str, *, jetstream: bool, signing_keys: Sequence[str] = ()
) -> str:
    limits = {**_ACCOUNT_LIMITS, **(_JETSTREAM_LIMITS if jetstream else {})}
    nats: dict[str, Any] = {"type": "account", "limits": limits}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    return encode_jwt(subject=public_key(account), name=name, signer=operator, nats=nats)


def user_jwt(
    user_public_key: str,
    name: str,
    perms: Permissions,
    *,
    signing_key: Any,
    account_public_key: str,
    expires_s: float = 0,
) -> str:
    """A user of the account, signed with one of the account's signing keys."""
    if not perms.publish or not perms.subscribe:
        # An empty allow list in a NATS JWT means "everything", never "nothing".
        raise ValueError("a user needs at least one publish and one subscribe permission")
    nats: dict[str, Any] = {
        "type": "user",
        "issuer_account": account_public_key,
        "pub": {"allow": list(perms.publish)},
        "sub": {"allow": list(perms.subscribe)},
        **_UNLIMITED,
    }
    if perms.respond:
        nats["resp"] = {"max": 1, "ttl": 0}
    return encode_jwt(
        subject=user_public_key, name=name, nats=nats, signer=signing_key, expires_s=expires_s
    )


def creds_text(jwt: str, seed: str) -> str:
    """The `.creds` file format every NATS client reads (`user_credentials=`)."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )


@dataclass(frozen=True, slots=True)
class UserCredentials:
    """A freshly issued NATS user: its JWT, its private seed and the `.creds` text of both."""

    name: str
    jwt: str
    seed: str
    permissions: Permissions
    expires_at: int | None = None
    creds: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "creds", creds_text(self.jwt, self.seed))


class Issuer:
    """Signs user JWTs for the application account with its signing key."""

    def __init__(self, signing_seed: str, account_public_key: str) -> None:
        self._signing_key = keypair(signing_seed)
        if not account_public_key.startswith("A"):
            raise ValueError(f"{account_public_key!r} is not an account public key")
        self.account = account_public_key

    def issue(self, name: str, perms: Permissions, expires_s: float = 0) -> UserCredentials:
        user = new_keypair(nkeys.PREFIX_BYTE_USER)
        jwt = user_jwt(
            public_key(user), name, perms, signing_key=self._signing_key,
            account_public_key=self.account, expires_s=expires_s,
        )
        exp = decode_claims(jwt).get("exp")
        return UserCredentials(name, jwt, seed_of(user), perms,
                               int(exp) if exp is not None else None)

    def service(self, role: str) -> UserCredentials:
        try:
            perms = SERVICE_ROLES[role]
        except KeyError:
            raise ValueError(f"unknown service role {role!r}; one of {sorted(SERVICE_ROLES)}")\
                from None
        return self.issue(f"svc-{role}", perms)

    def tenant(self, tenant: str, expires_s: float) -> UserCredentials:
        return self.issue(f"tenant-{tenant}", tenant_permissions(tenant), expires_s)
