"""on_crons are validated when a workflow is registered: a bad cron is a 400, nothing stored."""

from __future__ import annotations

import pytest
from ratchet import ApiError, Ratchet

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _spec(name: str, on_crons: list[str]) -> dict[str, object]:
    return {"name": name, "tasks": [{"name": "t"}], "on_crons": on_crons}


@pytest.mark.parametrize(
    ("on_crons", "fragment"),
    [
        (["*/5 * * * *", "61 * * * *"], "on_crons[1]: invalid cron expression '61 * * * *'"),
        (["every minute"], "on_crons[0]: cron expression must have 5 fields"),
        (["0 0 31 2 *"], "never fires"),
    ],
)
async def test_bad_on_crons_are_rejected_at_registration(
    client: Ratchet, on_crons: list[str], fragment: str
) -> None:
    with pytest.raises(ApiError) as info:
        await client.arequest("POST", "/workflows", json=_spec("cronbad", on_crons))
    assert info.value.status == 400
    assert fragment in info.value.detail
    # Nothing half-registered: no workflow, and the valid entries did not become crons.
    with pytest.raises(ApiError) as missing:
        await client.arequest("GET", "/workflows/cronbad")
    assert missing.value.status == 404
    assert await client.arequest("GET", "/crons", params={"workflow": "cronbad"}) == []


async def test_good_on_crons_register(client: Ratchet) -> None:
    await client.arequest("POST", "/workflows",
                          json=_spec("crongood", ["*/5 * * * *", "@daily", "0 30 9 * * 1"]))
    crons = await client.arequest("GET", "/crons", params={"workflow": "crongood"})
    assert sorted(c["expression"] for c in crons) == ["*/5 * * * *", "0 30 9 * * 1", "@daily"]
    # Leave no live crons behind: other tests drive tickers over every tenant's due rows.
    await client.arequest("POST", "/workflows", json=_spec("crongood", []))
    assert await client.arequest("GET", "/crons", params={"workflow": "crongood"}) == []
