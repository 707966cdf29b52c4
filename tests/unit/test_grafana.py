"""Every Grafana panel's SQL runs against chDB with seeded data and gives sensible numbers."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.common import olap
from libs.common.messages import RunStateChanged, TaskStateChanged
from libs.common.olap import ChdbBackend
from services.replicator import rows

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "grafana"
DASHBOARD = ROOT / "dashboards" / "ratchet.json"
T0 = 1_700_000_000_000
FROM_S, TO_S = T0 // 1000 - 3600, T0 // 1000 + 3600


def expand_macros(sql: str, from_s: int = FROM_S, to_s: int = TO_S, interval_s: int = 60) -> str:
    """The grafana-clickhouse-datasource macros the dashboard uses, expanded as the plugin does."""
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m[1]} >= toDateTime({from_s}) AND {m[1]} <= toDateTime({to_s})",
        sql,
    )
    sql = sql.replace("$__fromTime", f"toDateTime({from_s})").replace("$__toTime", f"toDateTime({to_s})")
    sql = sql.replace("$__interval_s", str(interval_s))
    assert "$" not in sql, f"unexpanded macro in {sql}"
    return sql


def panels() -> list[dict[str, Any]]:
    return json.loads(DASHBOARD.read_text())["panels"]  # type: ignore[no-any-return]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ChdbBackend]:
    backend = ChdbBackend(tmp_path / "chdb")
    await olap.ensure_schema(backend)
    task_rows, run_rows = [], []
    # acme: 10 "etl" attempts, 2 of them failing; zeta: 4 "mail" successes. Each attempt waits
    # 50 ms in the queue and runs 200 ms.
    for tenant, workflow, n, failures in (("acme", "etl", 10, 2), ("zeta", "mail", 4, 0)):
        for i in range(n):
            q = T0 + i * 1000
            common = dict(tenant=tenant, run_id=f"{tenant}-r{i}", task_id=f"{tenant}-t{i}",
                          task_name="step", workflow=workflow, attempt=0, queued_ms=q)
            end_state = "FAILED" if i < failures else "SUCCEEDED"
            for state, ts in (("QUEUED", q), ("RUNNING", q + 50), (end_state, q + 250)):
                change = TaskStateChanged(**common, state=state, ts_ms=ts,  # type: ignore[arg-type]
                                          started_ms=q + 50 if state != "QUEUED" else 0)
                task_rows.append(rows.task_event_row(change))
            run_rows.append(rows.run_row(RunStateChanged(
                tenant=tenant, run_id=f"{tenant}-r{i}", workflow=workflow, status=end_state,
                ts_ms=q + 250, created_ms=q)))
    await backend.insert(olap.TASK_EVENTS, task_rows * 2)  # a redelivery changes nothing
    await backend.insert(olap.RUNS, run_rows)
    try:
        yield backend
    finally:
        await backend.close()


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    ds = yaml.safe_load((ROOT / "provisioning" / "datasources" / "clickhouse.yml").read_text())
    [source] = ds["datasources"]
    assert source["type"] == "grafana-clickhouse-datasource"
    uids = {p["datasource"]["uid"] for p in panels()}
    assert uids == {source["uid"]}
    boards = yaml.safe_load((ROOT / "provisioning" / "dashboards" / "dashboards.yml").read_text())
    assert boards["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    titles = " ".join(p["title"].lower() for p in panels())
    for word in ("throughput", "failure rate", "p95", "workflow", "tenant"):
        assert word in titles


async def run_panel(store: ChdbBackend, title: str) -> list[dict[str, Any]]:
    [panel] = [p for p in panels() if p["title"] == title]
    [target] = panel["targets"]
    return await store.query(expand_macros(target["rawSql"]))


async def test_every_panel_query_runs(store: ChdbBackend) -> None:
    for panel in panels():
        for target in panel["targets"]:
            result = await store.query(expand_macros(target["rawSql"]))
            assert result, f"panel {panel['title']!r} returned no rows"


async def test_panels_give_the_seeded_numbers(store: ChdbBackend) -> None:
    throughput = await run_panel(store, "Throughput (finished task attempts / min)")
    assert sum(r["succeeded"] for r in throughput) == 12
    assert sum(r["failed"] for r in throughput) == 2
    failure = await run_panel(store, "Failure rate")
    assert all(0 <= r["failure_rate"] <= 1 for r in failure)
    assert max(r["failure_rate"] for r in failure) > 0
    latency = await run_panel(store, "p95 queue wait and duration (ms)")
    assert {(r["p95_wait_ms"], r["p95_duration_ms"]) for r in latency} == {(50, 200)}
    per_tenant_ts = await run_panel(store, "Throughput per tenant (finished / min)")
    assert {r["tenant"]: 0 for r in per_tenant_ts}.keys() == {"acme", "zeta"}
    per_workflow = await run_panel(store, "Per workflow")
    assert [(r["workflow"], r["finished"], r["failed"], r["failure_rate"]) for r in per_workflow] == [
        ("etl", 10, 2, 0.2), ("mail", 4, 0, 0.0)
    ]
    per_tenant = await run_panel(store, "Per tenant")
    assert [(r["tenant"], r["runs"], r["failed"], r["p95_run_ms"]) for r in per_tenant] == [
        ("acme", 10, 2, 250), ("zeta", 4, 0, 250)
    ]


def test_time_filter_excludes_rows_outside_the_range() -> None:
    sql = expand_macros("SELECT 1 FROM t WHERE $__timeFilter(ts)", 10, 20)
    assert sql == "SELECT 1 FROM t WHERE ts >= toDateTime(10) AND ts <= toDateTime(20)"
