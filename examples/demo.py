"""`make demo`: a worker and a 3-step DAG run against the local stack (.run/env)."""

from __future__ import annotations

import json
import threading

import msgspec
from ratchet import Context, Ratchet


class Article(msgspec.Struct):
    url: str
    user: str


r = Ratchet()
pipeline = r.workflow("demo-pipeline", input=Article)


@pipeline.task(retries=2)
async def fetch(input: Article, ctx: Context) -> dict[str, str]:
    ctx.log(f"fetching {input.url}")
    return {"text": f"Ratchet keeps LLM pipelines running: fetched {input.url} for {input.user}"}


@pipeline.task(parents=[fetch])
def summarize(input: Article, ctx: Context) -> dict[str, object]:
    text = ctx.parent_output(fetch)["text"]
    return {"summary": text[:40] + "...", "words": len(text.split())}


@pipeline.task(parents=[fetch, summarize])
async def publish(input: Article, ctx: Context) -> dict[str, object]:
    summary = ctx.parent_output(summarize)
    return {"published": True, "words": summary["words"], "by": input.user}


def main() -> None:
    worker = r.worker("demo-worker", workflows=[pipeline], slots=8)
    thread = threading.Thread(target=worker.start, name="demo-worker", daemon=True)
    thread.start()
    try:
        ref = pipeline.run_no_wait(Article(url="https://example.com/post", user="ada"))
        print(f"triggered run {ref.run_id}")
        outputs = ref.result(timeout_s=60)
        print(json.dumps(outputs, indent=2))
        run = r.runs.get(ref.run_id)
        print(f"run {run['id']} {run['status']}: " + ", ".join(
            f"{t['name']}={t['status']}" for t in run["tasks"]
        ))
    finally:
        worker.stop()
        thread.join(timeout=30)
    print(f"\ndashboard: {r.config.api_url}/ui")
    print(f"log in with the dev token: {r.config.api_url}/ui/login?token={r.config.token}")


if __name__ == "__main__":
    main()
