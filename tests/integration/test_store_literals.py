"""The array literals the scheduler's flush binds (services/scheduler/persistence/literals.py):
PostgreSQL must read back exactly the values encoded, whatever the text holds."""

from __future__ import annotations

import asyncio

import asyncpg
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.scheduler.persistence.literals import ints, texts

# Text PostgreSQL can store: anything but NUL (and lone surrogates, which are not UTF-8).
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))


def _roundtrip(dsn: str, values: list[str | None], numbers: list[int | None]) -> tuple[list, list]:
    async def go() -> tuple[list, list]:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT $1::text::text[] AS t, $2::text::int8[] AS i", texts(values), ints(numbers)
            )
            return list(row["t"]), list(row["i"])
        finally:
            await conn.close()

    return asyncio.run(go())


def test_fast_path_literals() -> None:
    assert texts([]) == "{}"
    assert texts(["a", "b"]) == '{"a","b"}'
    assert texts(["a", None]) == '{"a",NULL}'
    assert ints([]) == "{}"
    assert ints([1, -2, None]) == "{1,-2,NULL}"


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), _TEXT), max_size=8),
       numbers=st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=8))
@example(values=['"', "\\", '\\"', "a,b", "{x}", "NULL", " spaced ", "", '{"k": "v\\n"}'],
         numbers=[0, -(2**63), 2**63 - 1])
@example(values=[""], numbers=[None])
def test_postgres_reads_back_what_was_encoded(
    pg_admin_dsn: str, values: list[str | None], numbers: list[int | None]
) -> None:
    assert _roundtrip(pg_admin_dsn, values, numbers) == (values, numbers)
