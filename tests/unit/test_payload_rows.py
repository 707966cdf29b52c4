"""The replicator keeps a marker naming an offloaded event payload, never the blob."""

from __future__ import annotations

import hashlib

import msgspec
from nats.aio.msg import Msg

from libs.common.payloads import PayloadRef, encode_ref, make_key
from services.replicator import rows

_REPLY = "$JS.ACK.EVT.replicator.1.7.7.1700000000000000000.0"


def _msg(data: bytes) -> Msg:
    return Msg(None, subject="evt.t1.doc.big", data=data, reply=_REPLY,  # type: ignore[arg-type]
               headers={"Ratchet-Event-Id": "e1"})


def test_event_row_of_an_offloaded_payload_is_a_ref_marker() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    ref = PayloadRef(make_key("t1", "evt-e1", sha), sha, 5_000_000)
    row = rows.event_row(_msg(encode_ref(ref)))
    assert row is not None
    assert msgspec.json.decode(row["payload"]) == {"$ref": ref.key, "size": 5_000_000}
    assert row["tenant"] == "t1" and row["key"] == "doc.big"


def test_event_row_of_an_inline_payload_is_the_json() -> None:
    row = rows.event_row(_msg(b'{"a":1}'))
    assert row is not None and row["payload"] == '{"a":1}'
