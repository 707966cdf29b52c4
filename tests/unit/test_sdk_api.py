"""The public SDK surface is pinned, and definitions fail at import time."""

import pytest
import ratchet
from ratchet import Context, Ratchet, WorkflowDefinitionError


def test_public_names_are_pinned() -> None:
    assert set(ratchet.__all__) == {
        "ApiError", "Concurrency", "Context", "DesiredLabel", "NonRetryable", "RateLimit",
        "Ratchet", "RatchetError", "RunFailed", "RunRef", "Sticky", "StickyStrategy", "Strategy", "Task",
        "Worker", "Workflow", "WorkflowDefinitionError",
    }


def test_bad_signature_fails_at_definition() -> None:
    wf = Ratchet(token="x").workflow("w")
    with pytest.raises(WorkflowDefinitionError):
        @wf.task()
        def bad(input: dict) -> dict:  # type: ignore[type-arg]
            return {}


def test_duplicate_and_foreign_parents_rejected() -> None:
    r = Ratchet(token="x")
    wf, other = r.workflow("a"), r.workflow("b")

    @other.task()
    def x(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {}

    @wf.task()
    def y(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {}

    with pytest.raises(WorkflowDefinitionError):
        wf.task(name="y")(lambda i, c: {})
    with pytest.raises(WorkflowDefinitionError):
        wf.task(parents=[x])(lambda i, c: {})


def test_mock_run_passes_parent_outputs() -> None:
    wf = Ratchet(token="x").workflow("m")

    @wf.task()
    async def first(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {"n": 1}

    @wf.task(parents=[first])
    def second(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {"n": ctx.parent_output(first)["n"] + input["add"]}

    assert first.mock_run({}) == {"n": 1}
    assert second.mock_run({"add": 2}, parent_outputs={"first": {"n": 1}}) == {"n": 3}
