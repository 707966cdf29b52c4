"""What the SDK does without a server: mock runs (from sync and async tests) and reading a
run's stream from an SSE response."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import ratchet
from ratchet import Context, Ratchet, _sse

# --- mock_run --------------------------------------------------------------------------------


def _workflow() -> tuple[ratchet.Task, ratchet.Task, ratchet.Task]:
    wf = Ratchet(token="x").workflow("local")

    @wf.task()
    async def fetch(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        await asyncio.sleep(0)
        return {"n": input["n"], "attempt": ctx.attempt}

    @wf.task(parents=[fetch])
    def double(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        return {"n": ctx.parent_output(fetch)["n"] * 2}

    @wf.durable_task()
    async def nap(input: dict, ctx: ratchet.DurableContext) -> dict:  # type: ignore[type-arg]
        await ctx.aio_sleep_for(3600)
        return {"slept": True}

    return fetch, double, nap


async def test_mock_run_works_inside_a_running_event_loop() -> None:
    fetch, double, nap = _workflow()
    asyncio.get_running_loop()  # this test runs on pytest-asyncio's loop

    assert fetch.mock_run({"n": 3}, attempt=2) == {"n": 3, "attempt": 2}
    assert double.mock_run({}, parent_outputs={"fetch": {"n": 3}}) == {"n": 6}
    assert nap.mock_run({}) == {"slept": True}


async def test_aio_mock_run_runs_on_the_callers_loop() -> None:
    fetch, double, nap = _workflow()
    loop = asyncio.get_running_loop()
    seen: list[asyncio.AbstractEventLoop] = []
    wf = Ratchet(token="x").workflow("where")

    @wf.task()
    async def where(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        seen.append(asyncio.get_running_loop())
        return {}

    assert await fetch.aio_mock_run({"n": 1}) == {"n": 1, "attempt": 0}
    assert await double.aio_mock_run({}, parent_outputs={"fetch": {"n": 4}}) == {"n": 8}
    assert await nap.aio_mock_run({}) == {"slept": True}
    await where.aio_mock_run({})
    assert seen == [loop]


def test_mock_run_without_a_loop_still_works() -> None:
    fetch, _, nap = _workflow()
    assert fetch.mock_run({"n": 5}) == {"n": 5, "attempt": 0}
    assert nap.mock_run({}) == {"slept": True}


async def test_a_failing_task_raises_from_mock_run_inside_a_loop() -> None:
    wf = Ratchet(token="x").workflow("fails")

    @wf.task()
    async def boom(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        raise ratchet.NonRetryable("no")

    with pytest.raises(ratchet.NonRetryable, match="no"):
        boom.mock_run({})
    with pytest.raises(ratchet.NonRetryable, match="no"):
        await boom.aio_mock_run({})


# --- the run's stream (SSE) ------------------------------------------------------------------

LINES = [
    ": keepalive", "",
    "event: chunk", "id: 1", 'data: {"type":"text","data":"hi","task":"t","attempt":0,"seq":0}', "",
    "event: chunk", 'data: {"type":"bytes","data":"AP8="}', "",
    "event: chunk", 'data: {"type":"json","data":{"k":1}}', "",
    "event: end", 'data: {"status":"SUCCEEDED"}', "",
    "event: chunk", 'data: {"type":"text","data":"after the end"}', "",
]


def _body(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def _response(lines: list[str]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream; charset=utf-8"},
                          content=_body(lines))


class _Drip(httpx.AsyncByteStream):
    """The body a few bytes at a time, so events arrive split across reads."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self._body), 7):
            yield self._body[i:i + 7]


def test_sse_yields_typed_chunks_and_stops_at_the_end_event() -> None:
    assert list(_sse.iterate(_response(LINES))) == ["hi", b"\x00\xff", {"k": 1}]


def test_sse_stream_closed_before_the_end_is_an_error() -> None:
    with pytest.raises(ConnectionError):
        list(_sse.iterate(_response(LINES[:6])))


async def test_sse_async_reads_events_split_across_reads() -> None:
    response = httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=_Drip(_body(LINES)))
    assert [chunk async for chunk in _sse.aiterate(response)] == ["hi", b"\x00\xff", {"k": 1}]
    cut = httpx.Response(200, headers={"content-type": "text/event-stream"},
                         stream=_Drip(_body(LINES[:9])))
    with pytest.raises(ConnectionError):
        [chunk async for chunk in _sse.aiterate(cut)]


def test_sse_over_a_real_http_connection() -> None:
    """Through httpx's transport, as `r.runs.stream` reads it (a local server, no mocks)."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(_body(LINES))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/runs/x/stream"
        with httpx.Client() as client, client.stream("GET", url) as resp:
            chunks: Iterator[object] = _sse.iterate(resp)
            assert list(chunks) == ["hi", b"\x00\xff", {"k": 1}]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
