"""Dashboard pages over HTTP (no browser): keyset paging, every view renders, bounded fan-out."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from ratchet import Ratchet

from libs.common.messages import RunStateChanged, StateChanges
from services.api.ui.live import MAX_PENDING, Broadcaster
from tests.integration.conftest import Stack

pytestmark = pytest.mark.asyncio(loop_scope="session")

_RUN_LINK = re.compile(r'<a class="mono" href="/ui/runs/([0-9a-z_]+)">')
_OLDER = re.compile(r'href="/ui/runs\?([^"]*after=[^"]*)">Older')


async def test_keyset_paging_visits_every_run_once_newest_first(
    stack: Stack, tenant: str, token: str
) -> None:
    # Stored directly: what is tested is the listing, over more runs than fit on pages, with
    # several runs sharing a created_at (the id breaks the tie).
    base = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        (tenant, f"run{i:04d}", "wf-a" if i % 3 else "wf-b", "wv_x", "SUCCEEDED", 1, b"{}",
         base + timedelta(seconds=i // 4))
        for i in range(130)
    ]
    conn = await asyncpg.connect(stack.settings.database_url)
    try:
        await conn.executemany(
            "INSERT INTO runs (tenant_id, id, workflow, version_id, status, priority, input,"
            " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows,
        )
    finally:
        await conn.close()
    expected = [r[1] for r in sorted(rows, key=lambda r: (r[7], r[1]), reverse=True)]

    async with httpx.AsyncClient(base_url=stack.api_url,
                                 cookies={"ratchet_token": token}) as http:
        seen: list[str] = []
        url: str | None = "/ui/runs"
        while url is not None:
            page = await http.get(url)
            assert page.status_code == 200
            seen.extend(_RUN_LINK.findall(page.text))
            older = _OLDER.search(page.text)
            url = "/ui/runs?" + older.group(1).replace("&amp;", "&") if older else None
        assert seen == expected

        only_b = await http.get("/ui/runs", params={"workflow": "wf-b"})
        assert set(_RUN_LINK.findall(only_b.text)) <= {r[1] for r in rows if r[2] == "wf-b"}

        bad = await http.get("/ui/runs", params={"meta": "no-colon", "status": "NOPE"})
        assert "is not key:value" in bad.text and "status must be one of" in bad.text


@pytest.mark.parametrize("path", [
    "/ui/runs", "/ui/workflows", "/ui/workers", "/ui/events", "/ui/filters", "/ui/crons",
    "/ui/rate-limits", "/ui/analytics", "/ui/settings",
])
async def test_every_view_renders_an_empty_state_for_a_new_tenant(
    stack: Stack, token: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url,
                                 cookies={"ratchet_token": token}) as http:
        page = await http.get(path)
    assert page.status_code == 200
    assert "<main" in page.text and 'aria-current="page"' in page.text


async def test_pages_without_a_session_redirect_to_login(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        page = await http.get("/ui/runs")
        assert page.status_code in (302, 303, 307) and page.headers["location"] == "/ui/login"
        fragment = await http.get("/ui/runs", headers={"HX-Request": "true"})
        assert fragment.headers.get("HX-Redirect") == "/ui/login"
        assert (await http.get("/")).headers["location"] == "/ui"
        schema = (await http.get("/schema/openapi.json")).json()
        assert schema["paths"] and not [p for p in schema["paths"] if p.startswith("/ui")]


def _change(tenant: str, run_id: str, status: str, created_ms: int = 0) -> StateChanges:
    return StateChanges(runs=[RunStateChanged(tenant=tenant, run_id=run_id, workflow="w",
                                              status=status, ts_ms=1, created_ms=created_ms)])


async def test_pages_see_only_their_runs_of_their_tenant_with_a_bounded_backlog() -> None:
    hub = Broadcaster()
    many = frozenset(f"r{i}" for i in range(MAX_PENDING * 2))
    busy = hub.subscribe("ta", many, counts_created=True)
    theirs = hub.subscribe("tb", many, counts_created=True)
    one_run = hub.subscribe("ta", tasks_of="r1")
    for i in range(MAX_PENDING * 2):
        hub.publish(_change("ta", f"r{i}", "RUNNING"))
    hub.publish(_change("ta", "r1", "SUCCEEDED"))  # coalesced: the latest status wins
    hub.publish(_change("ta", "new1", "PENDING", created_ms=1))  # created in this batch
    hub.publish(_change("ta", "r5", "PENDING", created_ms=0))  # a replay: not new

    runs, _, overflowed = busy.take()
    assert overflowed and len(runs) <= MAX_PENDING
    assert busy.created == 1
    assert theirs.take() == ({}, {}, False) and theirs.created == 0
    runs, _, overflowed = one_run.take()
    assert runs == {"r1": "SUCCEEDED"} and not overflowed
    for sub in (busy, theirs, one_run):
        hub.unsubscribe(sub)
    hub.publish(_change("ta", "r2", "RUNNING"))
    assert busy.take() == ({}, {}, False)


async def test_a_revocation_wakes_and_ends_only_that_tokens_streams() -> None:
    hub = Broadcaster()
    doomed = hub.subscribe("ta", frozenset({"r1"}), token_id="tok_a")
    other = hub.subscribe("ta", frozenset({"r1"}), token_id="tok_b")
    await hub.revoked("tok_a")
    assert doomed.ended and doomed.wake.is_set()
    assert not other.ended and not other.wake.is_set()


def _csrf(html: str) -> str:
    return html.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def _spec(name: str, tasks: list[str]) -> dict[str, object]:
    return {"name": name, "tasks": [{"name": t} for t in tasks]}


async def test_versions_diff_crons_and_filters_through_the_rest_handlers(
    stack: Stack, token: str, client: Ratchet
) -> None:
    first = await client.arequest("POST", "/workflows", json=_spec("wf-v", ["a"]))
    second = await client.arequest("POST", "/workflows", json=_spec("wf-v", ["a", "b"]))
    async with httpx.AsyncClient(base_url=stack.api_url,
                                 cookies={"ratchet_token": token}) as http:
        page = await http.get("/ui/workflows/wf-v",
                              params={"a": first["id"], "b": second["id"]})
        assert page.status_code == 200
        assert first["id"] in page.text and second["id"] in page.text
        assert '<span class="add">+' in page.text  # task b appears in the diff
        csrf = _csrf(page.text)

        made = await http.post("/ui/crons", data={
            "csrf": csrf, "workflow": "wf-v", "expression": "0 9 * * 1", "name": "weekly",
        })
        assert made.status_code == 303
        crons = await client.arequest("GET", "/crons")
        assert [c["name"] for c in crons] == ["weekly"]
        bad = await http.post("/ui/crons", data={
            "csrf": csrf, "workflow": "wf-v", "expression": "not a cron",
        }, follow_redirects=True)
        assert "Not created" in bad.text
        deleted = await http.post(f"/ui/crons/{crons[0]['id']}/delete", data={"csrf": csrf})
        assert deleted.status_code == 303 and await client.arequest("GET", "/crons") == []

        refused = await http.post("/ui/filters", data={
            "csrf": csrf, "workflow": "wf-v", "expression": "input.user ==",
        }, follow_redirects=True)
        assert "invalid expression" in refused.text
        assert await client.arequest("GET", "/filters") == []
        await http.post("/ui/filters", data={
            "csrf": csrf, "workflow": "wf-v", "expression": "input.user != 'bot'",
        })
        assert [f["expression"] for f in await client.arequest("GET", "/filters")] == [
            "input.user != 'bot'"
        ]
