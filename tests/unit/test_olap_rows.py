"""Pure pieces of the OLAP path: row mapping, versions, and read guards."""

from __future__ import annotations

import pytest

from libs.common import olap
from libs.common.messages import TaskStateChanged
from libs.common.olap import OlapError
from services.replicator import rows


def test_task_row_measures_wait_on_start_and_duration_on_end() -> None:
    base = dict(tenant="t", run_id="r", task_id="x", task_name="n", workflow="w", attempt=1,
                queued_ms=1_000, started_ms=1_250)
    running = rows.task_event_row(TaskStateChanged(**base, state="RUNNING", ts_ms=1_250))  # type: ignore[arg-type]
    done = rows.task_event_row(TaskStateChanged(**base, state="SUCCEEDED", ts_ms=2_000))  # type: ignore[arg-type]
    assert (running["wait_ms"], running["duration_ms"]) == (250, -1)
    assert (done["wait_ms"], done["duration_ms"]) == (-1, 750)
    assert done["ts"] == "2.000"


def test_ch_time_and_run_version() -> None:
    assert olap.ch_time(1_700_000_000_007) == "1700000000.007"
    assert olap.run_version(10, "SUCCEEDED") > olap.run_version(10, "RUNNING")
    assert olap.run_version(11, "RUNNING") > olap.run_version(10, "FAILED")


def test_scope_to_tenant_overrides_and_requires_the_filter() -> None:
    sql = "SELECT 1 FROM ratchet.runs WHERE tenant = {tenant:String}"
    assert olap.scope_to_tenant(sql, {"tenant": "b", "x": 1}, "a") == {"tenant": "a", "x": 1}
    with pytest.raises(OlapError):
        olap.scope_to_tenant("SELECT 1 FROM ratchet.runs", None, "a")
    with pytest.raises(OlapError):
        olap.scope_to_tenant(sql, None, "Bad Tenant")
    with pytest.raises(OlapError):
        olap.scope_to_tenant("ALTER TABLE x DELETE WHERE tenant = {tenant:String}", None, "a")


async def test_client_reports_an_unreachable_server_as_olap_error() -> None:
    from libs.common.settings import Settings

    client = olap.OlapClient(Settings(clickhouse_url="http://127.0.0.1:1"), timeout_s=1)
    with pytest.raises(OlapError, match="ClickHouse"):
        await client.query("SELECT 1 FROM ratchet.runs WHERE tenant = {tenant:String}", {},
                           tenant="acme")
    await client.close()


def test_match_rows_one_row_per_outcome() -> None:
    from nats.aio.msg import Msg

    from libs.common.match_messages import EventMatches, MatchBatch, MatchOutcome
    from libs.common.messages import encode

    record = EventMatches(
        tenant="t", event_id="e1", event_key="doc.uploaded", scope="team-a", ts_ms=5_000,
        outcomes=[
            MatchOutcome(workflow="wf", outcome="matched", filter_id="f1", run_id="r1"),
            MatchOutcome(workflow="wf", outcome="no_match", filter_id="f2"),
        ],
    )
    msg = Msg(None, subject="task.t.match", data=encode(MatchBatch(records=[record])),  # type: ignore[arg-type]
              headers={"Nats-Msg-Id": "matches:t:e1:e1:1"})
    out = rows.match_rows(msg)
    assert [(r["workflow"], r["matched"], r["run_id"], r["msg_id"]) for r in out] == [
        ("wf", 1, "r1", "match:e1:0"), ("wf", 0, "", "match:e1:1"),
    ]
    assert all(r["tenant"] == "t" and r["event_id"] == "e1" and r["ts"] == "5.000" for r in out)
    assert '"scope":"team-a"' in out[0]["detail"]
    bad = Msg(None, subject="task.t.match", data=b"\xc1", headers={"Nats-Msg-Id": "x"})  # type: ignore[arg-type]
    assert rows.match_rows(bad) == []
