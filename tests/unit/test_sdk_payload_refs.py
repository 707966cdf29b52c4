"""The SDK's mirror of payload references agrees with libs/common/payloads, both ways; task
outputs encode to the same JSON whichever way the SDK builds it."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ratchet import _codec
from ratchet import _payloads as sdk

from libs.common import payloads as lib

_TENANT = st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True)
_SCOPE = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.:=+-]{0,40}", fullmatch=True)


@given(_TENANT, _SCOPE, st.binary(max_size=64), st.integers(0, 2**40))
def test_sdk_and_lib_encode_the_same_bytes(tenant: str, scope: str, body: bytes, size: int) -> None:
    sha = hashlib.sha256(body).hexdigest()
    ref = lib.PayloadRef(lib.make_key(tenant, scope, sha), sha, size)
    mirrored = sdk.Ref(ref.key, ref.sha256, ref.size)
    assert sdk.encode(mirrored) == lib.encode_ref(ref)
    assert sdk.decode(lib.encode_ref(ref)) == mirrored
    assert lib.maybe_ref(sdk.encode(mirrored)) == ref


def test_magic_and_inline_json() -> None:
    assert sdk.REF_MAGIC == lib.REF_MAGIC
    assert sdk.decode(b'{"a": 1}') is None
    assert not sdk.is_ref(b"")


class _Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Blob:
    name: str
    data: bytes


class _Part(msgspec.Struct):
    n: int
    blobs: list[_Blob]


class _Model(pydantic.BaseModel):
    when: datetime.datetime
    tags: set[str]


@pytest.mark.parametrize("value", [
    None, 3, 2.5, "é", b"\x00\xff", bytearray(b"ab"), {1: "int key", 2.5: "float key"},
    {_Color.RED: [_Color.RED]}, (1, 2), frozenset({3}), {"s": {4}},
    datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC), datetime.date(2026, 1, 2),
    datetime.timedelta(seconds=90), uuid.UUID(int=7), {uuid.UUID(int=8): 1}, Decimal("1.10"),
    _Blob("b", b"\x01"), _Part(1, [_Blob("c", b"")]),
    _Model(when=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC), tags={"x"}),
])
def test_outputs_encode_as_their_builtins_do(value: Any) -> None:
    """`dumps` skips `to_builtins` (which turned a large `bytes` output into a base64 copy
    before encoding it): the JSON must stay what it was."""
    assert _codec.dumps(value) == msgspec.json.encode(_codec.to_builtins(value))
