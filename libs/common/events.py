"""Events as they arrive on `evt.<tenant>.<key>`: JSON body, optional Ratchet-* headers.

The REST API is just one publisher of these messages; anything a NATS client can publish
is read here the same way, so both paths share this one parser. The API validates keys,
ids and scopes with the same rules before it publishes; the matcher parses with `parse`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import msgspec
from nats.aio.msg import Msg

from libs.common.subjects import Header, valid_tenant

MAX_KEY_CHARS = 255
MAX_EVENT_ID_CHARS = 128
MAX_SCOPE_CHARS = 255
# Dot-separated tokens of safe characters: no wildcards (*, >), no whitespace, no empty token.
KEY_PATTERN = r"[A-Za-z0-9_\-:]+(\.[A-Za-z0-9_\-:]+)*"
_KEY = re.compile(KEY_PATTERN)
# Header values cannot carry line breaks; ids and scopes are also used inside msg-ids.
HEADER_SAFE_PATTERN = r"[^\r\n\x00]+"
_HEADER_SAFE = re.compile(HEADER_SAFE_PATTERN)

_SCOPE = Header.SCOPE.value.lower()
_EVENT_ID = Header.EVENT_ID.value.lower()
_METADATA = Header.METADATA.value.lower()
_IDEMPOTENCY_KEY = Header.IDEMPOTENCY_KEY.value.lower()
_MSG_ID = Header.MSG_ID.value.lower()


class BadEvent(ValueError):
    """An event that can never be processed; the message says why."""


@dataclass(frozen=True, slots=True)
class Event:
    """One parsed event, as every consumer of EVT sees it."""

    tenant: str
    key: str
    event_id: str
    scope: str | None
    payload: Any  # decoded JSON
    raw: bytes  # the JSON body, passed on as the run input unchanged
    metadata: dict[str, Any]
    idempotency_key: str | None = None  # the Ratchet-Idempotency-Key header, if any


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid event key, or None when it is."""
    if not key:
        return "event key must not be empty"
    if len(key) > MAX_KEY_CHARS:
        return f"event key longer than {MAX_KEY_CHARS} characters"
    if not _KEY.fullmatch(key):
        return (
            f"event key {key!r} must be dot-separated tokens of letters, digits, '_', '-', ':'"
        )
    return None


def header_problem(kind: str, value: str, max_chars: int) -> str | None:
    """Why `value` cannot travel in a header (empty, too long, a line break), or None."""
    if not value or len(value) > max_chars or not _HEADER_SAFE.fullmatch(value):
        return f"{kind} must be 1-{max_chars} characters without line breaks"
    return None


@lru_cache(maxsize=4096)
def _valid_tenant(tenant: str) -> bool:
    return valid_tenant(tenant)  # a set comparison per event adds up at thousands per second


@lru_cache(maxsize=4096)
def _key_problem(key: str) -> str | None:
    return key_problem(key)


def parse(msg: Msg) -> Event:
    """Decode one EVT message. Raises BadEvent for anything malformed (dead-lettered)."""
    parts = msg.subject.split(".", 2)
    if len(parts) != 3 or parts[0] != "evt":
        raise BadEvent(f"subject {msg.subject!r} is not evt.<tenant>.<key>")
    tenant, key = parts[1], parts[2]
    if not _valid_tenant(tenant):
        raise BadEvent(f"invalid tenant {tenant!r}")
    problem = _key_problem(key)
    if problem:
        raise BadEvent(problem)
    raw = msg.data or b"{}"  # `nats pub evt.t.k ""` means an event without data
    try:
        payload = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadEvent(f"payload is not JSON: {exc}") from exc
    headers = {k.lower(): v for k, v in (msg.headers or {}).items()}
    metadata: dict[str, Any] = {}
    meta_raw = headers.get(_METADATA)
    if meta_raw:
        try:
            decoded = msgspec.json.decode(meta_raw)
        except msgspec.DecodeError as exc:
            raise BadEvent(f"{Header.METADATA.value} is not JSON: {exc}") from exc
        if not isinstance(decoded, dict):
            raise BadEvent(f"{Header.METADATA.value} must be a JSON object")
        metadata = decoded
    # Without an explicit id, the stream sequence is stable across redeliveries.
    event_id = headers.get(_EVENT_ID) or _from_msg_id(headers.get(_MSG_ID)) \
        or f"seq-{msg.metadata.sequence.stream}"
    scope = headers.get(_SCOPE) or None
    return Event(tenant=tenant, key=key, event_id=event_id, scope=scope, payload=payload,
                 raw=raw, metadata=metadata, idempotency_key=headers.get(_IDEMPOTENCY_KEY) or None)


def _from_msg_id(msg_id: str | None) -> str | None:
    # The API publishes Nats-Msg-Id = evt:<tenant>:<event id>; a NATS client that only sets a
    # msg-id gets that id as its event id.
    if not msg_id:
        return None
    parts = msg_id.split(":", 2)
    if len(parts) == 3 and parts[0] == "evt":
        return parts[2]
    return msg_id


def run_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """Run metadata is str → str: non-string event metadata values are kept as JSON."""
    return {
        str(k): v if isinstance(v, str) else msgspec.json.encode(v).decode()
        for k, v in metadata.items()
    }
