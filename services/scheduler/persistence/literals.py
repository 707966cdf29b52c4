"""Columns as PostgreSQL array literals: how the batch's writes bind their rows.

Columns travel as array *literals* in one text parameter each (`$1::text` cast to the array
type, which PostgreSQL parses in C), and times as epoch milliseconds. Binding Python lists
costs asyncpg about 0.3-0.5 µs per element (isinstance checks against collections.abc for
each one) and 1.1 µs per datetime; a batch carries ~140 elements per task. Only bytea
columns are still bound as lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

# An epoch-ms column back to a timestamptz, in SQL: MS.format("column").
MS = "to_timestamp({}::float8 / 1000)"


def ms(value: datetime | None) -> int | None:
    """A timestamptz read back, as epoch milliseconds."""
    return None if value is None else int(value.timestamp() * 1000)


def texts(values: Sequence[str | None]) -> str:
    """A PostgreSQL text[] literal: every element quoted, NULL for None."""
    if not values:
        return "{}"
    if None not in values:
        body = '","'.join(values)  # type: ignore[arg-type]  # no None, checked above
        # Quotes and backslashes must be escaped; ids, names, states and most JSON have none.
        if "\\" not in body and body.count('"') == 2 * (len(values) - 1):
            return '{"' + body + '"}'
    return "{" + ",".join(
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    ) + "}"


def ints(values: Sequence[int | None]) -> str:
    """A PostgreSQL integer array literal (int, bigint or smallint), NULL for None."""
    if None not in values:
        return "{" + ",".join(map(str, values)) + "}"
    return "{" + ",".join("NULL" if v is None else str(v) for v in values) + "}"


def columns(rows: Sequence[tuple[Any, ...]], kinds: str) -> list[Any]:
    """Row tuples → one parameter per column: `t` a text[] literal, `i` an integer array literal
    (times are epoch ms), `b` a list (bytea[] is bound as is)."""
    out: list[Any] = []
    for i, kind in enumerate(kinds):
        column = [r[i] for r in rows]
        out.append(texts(column) if kind == "t" else ints(column) if kind == "i" else column)
    return out
