"""Concurrency holders: the stored text form reads back as the same holder, and anything
else is refused with a clear error (a corrupt concurrency_holders row must not load)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scheduler.records import Holder

ident = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@given(ident)
def test_run_holder_round_trips(run_id: str) -> None:
    holder = Holder.of_run(run_id)
    assert Holder.parse(holder.format()) == holder


@given(ident, st.integers(0, 10_000))
def test_task_holder_round_trips(task_id: str, attempt: int) -> None:
    holder = Holder.of_task(task_id, attempt)
    assert Holder.parse(holder.format()) == holder
    assert holder != Holder.of_task(task_id, attempt + 1)


def test_stored_forms_are_the_ones_already_in_postgres() -> None:
    assert Holder.of_run("abc").format() == "r:abc:-"
    assert Holder.of_task("def", 3).format() == "t:def:3"


@pytest.mark.parametrize("text", ["", "r:abc", "x:abc:1", "t:abc:-", "r:abc:2", "t::1", "t:abc:-1"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a concurrency holder"):
        Holder.parse(text)
