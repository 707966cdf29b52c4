"""Cron acceptance: one rule for workflow registration, the crons API and the ticker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.cronexpr import cron_problem, latest_tick, next_tick, on_crons_problem
from libs.common.specs import SpecError, TaskSpec, WorkflowSpec, validate


@pytest.mark.parametrize("expression", ["*/5 * * * *", "0 9 * * 1", "@hourly", "0 30 9 * * 1-5"])
def test_accepted(expression: str) -> None:
    assert cron_problem(expression) is None


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "invalid cron expression"),
        ("* * *", "5 fields"),
        ("", "5 fields"),
        ("@every 5m", "invalid cron expression"),
        ("0 0 31 2 *", "never fires"),
        ("* " * 200, "longer than"),
    ],
)
def test_rejected_with_reason(expression: str, fragment: str) -> None:
    problem = cron_problem(expression)
    assert problem is not None and fragment in problem


def test_on_crons_problem_names_the_entry() -> None:
    assert on_crons_problem(["@daily", "* * * * *"]) is None
    assert on_crons_problem(["@daily", "99 * * * *"]) == (
        "on_crons[1]: invalid cron expression '99 * * * *'")


def test_workflow_validation_rejects_bad_on_crons() -> None:
    spec = WorkflowSpec(name="w", tasks=[TaskSpec(name="t")], on_crons=["*/5 * * * *", "nope"])
    with pytest.raises(SpecError, match=r"workflow 'w': on_crons\[1\]"):
        validate(spec)


@settings(max_examples=100, deadline=None)
@given(fields=st.lists(st.text(alphabet="0123456789*/,-LW#?@ abcdefMONJA", max_size=6),
                       min_size=1, max_size=7))
def test_any_input_gets_an_answer_not_an_exception(fields: list[str]) -> None:
    problem = cron_problem(" ".join(fields))
    assert problem is None or isinstance(problem, str)


def test_ticks_of_a_five_field_and_a_six_field_cron() -> None:
    at = datetime(2026, 3, 2, 9, 0, 30, tzinfo=UTC)  # a Monday
    assert next_tick("0 9 * * 1", at) == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    assert latest_tick("0 9 * * 1", at) == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert next_tick("*/15 * * * * *", at) == datetime(2026, 3, 2, 9, 0, 45, tzinfo=UTC)
    # A tick exactly at `now` is the latest one; the next is strictly after it.
    on_tick = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    assert latest_tick("0 9 * * 1", on_tick) == on_tick
    assert next_tick("0 9 * * 1", on_tick) == on_tick + timedelta(days=7)


@settings(max_examples=100, deadline=None)
@given(expression=st.sampled_from(["*/5 * * * *", "0 9 * * 1", "@hourly", "0 30 9 * * 1-5"]),
       seconds=st.integers(0, 10**8))
def test_now_lies_between_the_latest_tick_and_the_next(expression: str, seconds: int) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    latest = latest_tick(expression, now)
    assert latest <= now < next_tick(expression, latest)
    assert next_tick(expression, now) == next_tick(expression, latest)
