"""The OLAP store follows RATCHET_RETENTION_DAYS: rows older than it go when ClickHouse merges."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.common import olap
from libs.common.olap import ChdbBackend, OlapBackend
from services.replicator import retention


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[OlapBackend]:
    store = ChdbBackend(tmp_path / "chdb")
    await olap.ensure_schema(store)
    try:
        yield store
    finally:
        await store.close()


def _event(key: str, ts: datetime) -> olap.Row:
    return {"tenant": "t", "key": key, "event_id": key, "scope": "", "payload": "{}",
            "ts": olap.ch_time(int(ts.timestamp() * 1000))}


async def test_rows_past_retention_are_dropped_and_recent_ones_kept(backend: OlapBackend) -> None:
    now = datetime.now(UTC)
    await backend.insert(olap.EVENTS, [_event("old", now - timedelta(days=40)),
                                       _event("new", now - timedelta(days=1))])
    await retention.apply(backend, 30)
    await backend.execute(f"OPTIMIZE TABLE {olap.EVENTS} FINAL")
    rows = await backend.query(f"SELECT key FROM {olap.EVENTS} FINAL ORDER BY key")
    assert [r["key"] for r in rows] == ["new"]


async def test_zero_keeps_everything_even_after_a_ttl_was_set(backend: OlapBackend) -> None:
    await retention.apply(backend, 0)  # no TTL yet: nothing to remove, no error
    await retention.apply(backend, 30)
    await retention.apply(backend, 0)
    old = datetime.now(UTC) - timedelta(days=400)
    await backend.insert(olap.EVENTS, [_event("ancient", old)])
    await backend.execute(f"OPTIMIZE TABLE {olap.EVENTS} FINAL")
    rows = await backend.query(f"SELECT key FROM {olap.EVENTS} FINAL")
    assert [r["key"] for r in rows] == ["ancient"]


def test_negative_retention_is_refused() -> None:
    with pytest.raises(ValueError, match="retention_days"):
        retention.statements(-1)


def test_every_olap_table_has_a_retention_column() -> None:
    # A table added without one would keep growing past RATCHET_RETENTION_DAYS.
    assert set(olap.TABLES) | {olap.TASK_STATS_1M} == set(retention.TTL_COLUMNS)
