"""Payload references: a ref stands where JSON bytes would, and no JSON is ever read as one."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.payloads import (
    REF_MAGIC,
    InvalidPayloadKey,
    PayloadRef,
    encode_ref,
    make_key,
    maybe_ref,
)
from libs.common.settings import load_settings

SHA = hashlib.sha256(b"hello").hexdigest()

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
tenants = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=64)
scopes = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:=+-]{0,40}", fullmatch=True)


def ref_of(tenant: str, scope: str, data: bytes) -> PayloadRef:
    sha = hashlib.sha256(data).hexdigest()
    return PayloadRef(make_key(tenant, scope, sha), sha, len(data))


@settings(max_examples=3 * settings().max_examples, deadline=None)
@given(value=json_values, indent=st.sampled_from([None, 0, 2]), lead=st.text(" \t\r\n", max_size=3))
def test_no_json_document_is_taken_for_a_ref(value: Any, indent: int | None, lead: str) -> None:
    for text in (json.dumps(value, indent=indent), json.dumps(value, ensure_ascii=False)):
        assert maybe_ref((lead + text).encode()) is None
    assert maybe_ref(msgspec.json.encode(value)) is None


@settings(max_examples=2 * settings().max_examples, deadline=None)
@given(tenant=tenants, scope=scopes, data=st.binary(max_size=64))
def test_a_ref_round_trips_and_is_compact(tenant: str, scope: str, data: bytes) -> None:
    ref = ref_of(tenant, scope, data)
    encoded = encode_ref(ref)
    assert encoded.startswith(REF_MAGIC)
    assert maybe_ref(encoded) == ref
    assert maybe_ref(bytearray(encoded)) == ref
    # The digest travels once, raw: far smaller than the key plus a hex sha256.
    assert len(encoded) < len(ref.key) + len(ref.sha256)
    with pytest.raises(ValueError):
        json.loads(encoded)


@settings(max_examples=2 * settings().max_examples, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_are_inline_or_a_clear_error(data: bytes) -> None:
    for candidate in (data, REF_MAGIC + data):
        try:
            ref = maybe_ref(candidate)
        except InvalidPayloadKey:
            assert candidate.startswith(REF_MAGIC)
        else:
            assert (ref is None) != candidate.startswith(REF_MAGIC)


def test_truncated_or_tampered_refs_are_refused() -> None:
    encoded = encode_ref(ref_of("t1", "run-1", b"hello"))
    for bad in (encoded[:-1], encoded + b"x", REF_MAGIC, REF_MAGIC + msgspec.msgpack.encode(
        ("t1", "run-1", b"short", 5)
    ), REF_MAGIC + msgspec.msgpack.encode(("t1", "run-1", bytes(32), -1)),
        REF_MAGIC + msgspec.msgpack.encode(("../t1", "run-1", bytes(32), 1))):
        with pytest.raises(InvalidPayloadKey):
            maybe_ref(bad)


@pytest.mark.parametrize(
    ("tenant", "scope"),
    [("", "run"), ("T1", "run"), ("t/1", "run"), ("..", "run"), ("t1", ""), ("t1", ".."),
     ("t1", "."), ("t1", "a/b"), ("t1", ".incoming"), ("t1", "a\x00b"), ("t1", "x" * 201)],
)
def test_bad_key_parts_are_refused(tenant: str, scope: str) -> None:
    with pytest.raises(InvalidPayloadKey):
        make_key(tenant, scope, SHA)


def test_a_ref_must_match_its_key() -> None:
    key = make_key("t1", "run-1", SHA)
    assert PayloadRef(key, SHA, 5).tenant == "t1"
    with pytest.raises(InvalidPayloadKey, match="does not end with"):
        PayloadRef(key, hashlib.sha256(b"other").hexdigest(), 5)
    with pytest.raises(InvalidPayloadKey):
        PayloadRef(f"t1/run-1/{SHA}/extra", SHA, 5)
    with pytest.raises(InvalidPayloadKey):
        PayloadRef(key, SHA, -1)
    # Decoding a ref from JSON validates it the same way.
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"key": "t1/../x", "sha256": "x", "size": 1}', type=PayloadRef)


def test_payload_limits_read_their_ratchet_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RATCHET_PAYLOAD_INLINE_BYTES", "RATCHET_MAX_PAYLOAD_BYTES"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().payload_inline_bytes == 128 * 1024
    assert load_settings().max_payload_bytes == 64 * 1024 * 1024
    monkeypatch.setenv("RATCHET_PAYLOAD_INLINE_BYTES", "1000")
    monkeypatch.setenv("RATCHET_MAX_PAYLOAD_BYTES", "2000")
    assert (load_settings().payload_inline_bytes, load_settings().max_payload_bytes) == (1000, 2000)
    monkeypatch.setenv("RATCHET_MAX_PAYLOAD_BYTES", "0")
    with pytest.raises(msgspec.ValidationError, match="max_payload_bytes"):
        load_settings()
