"""Workflows the dashboard's browser tests and screenshots drive with a real SDK worker.

- `ui-pipeline`: fetch → (summarize, tag) → publish, with a typed input (a form is generated
  from its schema). `publish` waits while `input.hold` is true, until the run is cancelled, so
  tests can see a run RUNNING and cancel it.
- `ui-flaky`: one task that fails (with a traceback) whenever `input.fail` is true.
- `ui-family`: one task that starts `input.children` child runs of `ui-flaky` and waits for them.
- `ui-chatty`: one task that logs at several levels and streams chunks; with `input.hold` it
  then waits until the run is cancelled.
"""

from __future__ import annotations

import msgspec
from ratchet import Context, NonRetryable, Ratchet, Workflow

PIPELINE = "ui-pipeline"
FLAKY = "ui-flaky"
FAMILY = "ui-family"
CHATTY = "ui-chatty"
STREAMED = ["Once ", "upon ", "a ", "time"]


class Article(msgspec.Struct):
    url: str
    user: str
    words: int = 100
    hold: bool = False


def workflows(r: Ratchet) -> list[Workflow]:
    pipeline = r.workflow(PIPELINE, input=Article, on_events=["article.published"],
                          description="Fetch an article, summarize and tag it, publish the result")

    @pipeline.task(retries=1)
    async def fetch(input: Article, ctx: Context) -> dict[str, object]:
        return {"text": f"article at {input.url}", "words": input.words}

    @pipeline.task(parents=[fetch])
    async def summarize(input: Article, ctx: Context) -> dict[str, object]:
        return {"summary": str(ctx.parent_output(fetch)["text"])[:20]}

    @pipeline.task(parents=[fetch])
    async def tag(input: Article, ctx: Context) -> dict[str, object]:
        return {"tags": ["news", input.user]}

    @pipeline.task(parents=[summarize, tag])
    def publish(input: Article, ctx: Context) -> dict[str, object]:
        if input.hold:  # a long-running step that stops when the run is cancelled
            ctx.wait_cancelled(timeout_s=240)
        return {"published": True, "by": input.user}

    flaky = r.workflow(FLAKY, description="Fails when asked to")

    @flaky.task(retries=1, backoff_factor=1.0)
    async def risky(input: dict[str, object], ctx: Context) -> dict[str, object]:
        if input.get("fail"):
            if ctx.attempt >= 1:
                raise NonRetryable("gave up: the upstream service said no twice")
            raise ConnectionError("upstream refused the connection")
        return {"ok": True}

    family = r.workflow(FAMILY, description="Starts child runs and waits for them")

    @family.task()
    async def spawn(input: dict[str, object], ctx: Context) -> dict[str, object]:
        count = int(str(input.get("children", 2)))
        refs = await flaky.aio_run_many([{"fail": False, "i": i} for i in range(count)])
        for ref in refs:
            await ref.aio_result(timeout_s=60)
        return {"children": [ref.run_id for ref in refs]}

    chatty = r.workflow(CHATTY, description="Logs and streams as it works")

    @chatty.task()
    def talk(input: dict[str, object], ctx: Context) -> dict[str, object]:
        ctx.log("warming up", level="debug")
        ctx.log("fetched 3 pages")
        for piece in STREAMED:
            ctx.put_stream(piece)
        ctx.put_stream({"progress": 1.0})
        ctx.log("page 2 was slow (2.4 s)", level="warning")
        if input.get("hold"):
            ctx.wait_cancelled(timeout_s=240)
        ctx.log("done")
        return {"pages": 3}

    return [pipeline, flaky, family, chatty]
