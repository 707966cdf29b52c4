"""Matcher fast paths that must agree with the slower library code they replace."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from libs.common.jetstream import deliveries
from services.matcher.service import RUN_NAMESPACE, event_run_id

tokens = st.text(min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(tenant=tokens, event_id=tokens, workflow=tokens, filter_id=st.text(max_size=20))
def test_run_ids_are_uuid5(tenant: str, event_id: str, workflow: str, filter_id: str) -> None:
    # Run ids must never change across versions: a redelivered event maps to the same run.
    name = f"evt\x00{tenant}\x00{event_id}\x00{workflow}\x00{filter_id}"
    assert event_run_id(tenant, event_id, workflow, filter_id) == uuid.uuid5(RUN_NAMESPACE, name).hex


@settings(max_examples=50, deadline=None)
@given(delivered=st.integers(1, 10**6), seq=st.integers(1, 10**9))
def test_deliveries_agree_with_nats_metadata(delivered: int, seq: int) -> None:
    for reply in (
        f"$JS.ACK.EVT.matcher.{delivered}.{seq}.{seq}.1700000000000000000.3",
        f"$JS.ACK.hub.ACCHASH.EVT.matcher.{delivered}.{seq}.{seq}.1700000000000000000.3.tok",
    ):
        msg = Msg(_client=None, subject="evt.t.k", reply=reply)  # type: ignore[arg-type]
        assert deliveries(msg) == msg.metadata.num_delivered == delivered
