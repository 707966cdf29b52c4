"""Large payloads on the request path: a run input (or event payload) above the inline limit
is stored and replaced by its encoded reference; a reference read back from a row is turned
into the JSON value it stands for."""

from __future__ import annotations

from typing import Any

import msgspec

from libs.common.payloads import PayloadStore, PayloadTooLarge, encode_ref, maybe_ref
from libs.common.settings import Settings


async def offload(
    store: PayloadStore, settings: Settings, tenant: str, scope_id: str, raw: bytes
) -> bytes:
    """`raw` JSON as it should travel: itself when small, else its stored reference.

    Raises:
        PayloadTooLarge: above RATCHET_MAX_PAYLOAD_BYTES (answered as a 413).
    """
    limit = settings.max_payload_bytes
    if len(raw) > limit:
        raise PayloadTooLarge(len(raw), limit)
    if len(raw) <= settings.payload_inline_bytes:
        return raw
    ref = await store.put_bytes(tenant, scope_id, raw, limit)
    return encode_ref(ref)


async def resolve(store: PayloadStore, tenant: str, raw: bytes | None) -> Any:
    """The JSON value a stored column holds, fetching it from the store if it is a reference."""
    if raw is None:
        return None
    ref = maybe_ref(raw)
    if ref is not None:
        raw = await store.get_bytes(tenant, ref)
    return msgspec.json.decode(raw) if raw else None
