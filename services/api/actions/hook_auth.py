"""How an incoming webhook request proves where it comes from, one function per source.

Each check takes the hook's secret and options, the request's headers (lower-cased names) and
its raw body, and either returns or raises `HookRefused` with the status to answer: 401 when
the credentials are missing, 403 when they are wrong or too old. Every comparison of a secret
or a MAC is constant-time (`hmac.compare_digest`). Sources with a signed timestamp (Stripe,
Slack) refuse a request whose timestamp is further than the tolerance from our clock, so a
captured request cannot be replayed later; GitHub signs no timestamp, and its redeliveries are
made harmless by the delivery id becoming the event id (a repeat is the same event).

The formats are the providers' own (docs/webhooks.md has the setup recipes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SOURCES = ("github", "stripe", "slack", "hmac", "basic", "api_key")
DEFAULT_TOLERANCE_S = 300.0


class HookRefused(Exception):
    """The request is refused with `status` (401, 403 or 400); the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HookAuth:
    """A hook's verification settings."""

    source: str
    secret: str
    config: Mapping[str, Any]
    now_s: float  # our clock, for the timestamp tolerance

    @property
    def tolerance_s(self) -> float:
        return float(self.config.get("tolerance_s", DEFAULT_TOLERANCE_S))


def _mac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name.lower())
    if not value:
        raise HookRefused(401, f"missing {name} header")
    return value


def _fresh(auth: HookAuth, timestamp: str, name: str) -> None:
    try:
        ts = float(timestamp)
    except ValueError:
        raise HookRefused(403, f"{name} is not a unix timestamp") from None
    if abs(auth.now_s - ts) > auth.tolerance_s:
        raise HookRefused(
            403, f"{name} is {abs(auth.now_s - ts):.0f} s from now, outside the tolerance of "
            f"{auth.tolerance_s:.0f} s (a replay, or a clock that is off)",
        )


def _github(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> None:
    given = _header(headers, "X-Hub-Signature-256")
    if not _same(given, "sha256=" + _mac(auth.secret, body)):
        raise HookRefused(403, "X-Hub-Signature-256 does not match the body")


def _stripe(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> None:
    header = _header(headers, "Stripe-Signature")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    if "t" not in parts or "v1" not in parts:
        raise HookRefused(403, "Stripe-Signature lacks t= or v1=")
    timestamp = parts["t"][0]
    expected = _mac(auth.secret, timestamp.encode() + b"." + body)
    # Stripe may send several v1 signatures (while a secret is being rolled): any may match.
    if not any(_same(sig, expected) for sig in parts["v1"]):
        raise HookRefused(403, "Stripe-Signature does not match the body")
    _fresh(auth, timestamp, "the Stripe-Signature timestamp")


def _slack(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> None:
    timestamp = _header(headers, "X-Slack-Request-Timestamp")
    given = _header(headers, "X-Slack-Signature")
    expected = "v0=" + _mac(auth.secret, b"v0:" + timestamp.encode() + b":" + body)
    if not _same(given, expected):
        raise HookRefused(403, "X-Slack-Signature does not match the body")
    _fresh(auth, timestamp, "X-Slack-Request-Timestamp")


def _hmac(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> None:
    name = str(auth.config.get("header", "X-Signature"))
    prefix = str(auth.config.get("prefix", "sha256="))
    given = _header(headers, name)
    if not _same(given, prefix + _mac(auth.secret, body)):
        raise HookRefused(403, f"{name} does not match the body")


def _basic(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> None:
    header = headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        raise HookRefused(401, "missing Authorization: Basic credentials")
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise HookRefused(401, "Authorization: Basic is not base64 of user:password") from None
    user, sep, password = decoded.partition(":")
    expected_user = str(auth.config.get("username", ""))
    # Both compared, always: no early exit telling which half was wrong.
    ok_user = _same(user, expected_user)
    ok_password = _same(password, auth.secret)
    if not sep or not (ok_user and ok_password):
        raise HookRefused(403, "wrong user name or password")


def _api_key(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> None:
    name = str(auth.config.get("header", "X-API-Key"))
    if not _same(_header(headers, name), auth.secret):
        raise HookRefused(403, f"wrong {name}")


_CHECKS: dict[str, Callable[[HookAuth, Mapping[str, str], bytes], None]] = {
    "github": _github, "stripe": _stripe, "slack": _slack, "hmac": _hmac,
    "basic": _basic, "api_key": _api_key,
}


def verify(auth: HookAuth, headers: Mapping[str, str], body: bytes) -> None:
    """Raise `HookRefused` unless the request carries valid credentials for the hook."""
    _CHECKS[auth.source](auth, headers, body)


def delivery_id(source: str, config: Mapping[str, Any], headers: Mapping[str, str],
                body: Any) -> str | None:
    """The provider's id of this delivery (the same on a redelivery), or None.

    GitHub names it in a header; Stripe and Slack in the body (`id`, `event_id`); the generic
    sources use the header their `id_header` option names, if any.
    """
    if source == "github":
        return headers.get("x-github-delivery") or None
    if source == "stripe" and isinstance(body, dict) and isinstance(body.get("id"), str):
        return str(body["id"])
    if source == "slack" and isinstance(body, dict) and isinstance(body.get("event_id"), str):
        return str(body["event_id"])
    id_header = config.get("id_header")
    if isinstance(id_header, str) and id_header:
        return headers.get(id_header.lower()) or None
    return None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Ratchet-Signature` header of an outgoing delivery: `t=<unix>,v1=<hex>` where the
    MAC is HMAC-SHA256 of `<t>.<body>` (docs/webhooks.md shows how to check it)."""
    return f"t={timestamp},v1={_mac(secret, str(timestamp).encode() + b'.' + body)}"
