"""The SDK's mirror of payload references agrees with libs/common/payloads, both ways."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st
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
