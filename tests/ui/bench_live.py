"""Do open dashboard pages slow the task path? Runs/s with 0 and with N live runs-list pages.

    python -m tests.ui.bench_live [runs] [pages]

One private stack in this process (API, scheduler, dispatcher and an SDK worker share one
event loop, so whatever the pages cost the API is also taken from the task path: a harsher
setting than a deployment, where the API is its own process). Each round bulk-triggers `runs`
one-task runs and times them to the last SUCCEEDED, first with no page open, then with `pages`
SSE streams of the runs list open (every change of the tenant reaches every page), then with
none again. Prints one line per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import time

import asyncpg
import httpx
from ratchet import Ratchet

from tests.ui import seed
from tests.ui.screenshots import PrivateStack, private_stack, scratch_dir


async def _round(st: PrivateStack, r: Ratchet, runs: int) -> float:
    conn = await asyncpg.connect(st.database_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM runs WHERE status = 'SUCCEEDED'")
        started = time.perf_counter()
        for i in range(0, runs, 1000):
            batch = [{"input": {"fail": False}} for _ in range(min(1000, runs - i))]
            await r.arequest("POST", f"/workflows/{seed.FLAKY}/run/bulk", json={"runs": batch})
        deadline = started + 600
        while await conn.fetchval(
            "SELECT count(*) FROM runs WHERE status = 'SUCCEEDED'"
        ) < before + runs:
            if time.perf_counter() > deadline:
                raise TimeoutError("runs did not finish in 10 minutes")
            await asyncio.sleep(0.05)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _page(http: httpx.AsyncClient, received: list[int]) -> None:
    async with http.stream("GET", "/ui/live/runs") as response:
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                received[0] += 1


async def bench(runs: int, pages: int) -> None:
    base = scratch_dir()
    try:
        async with private_stack(base) as st:
            r = Ratchet(token=st.token, api_url=st.api_url, grpc_addr=st.grpc_addr)
            wfs = {w.name: w for w in seed.workflows(r)}
            worker = r.worker("bench-worker", workflows=list(wfs.values()), slots=200)
            task = asyncio.create_task(worker.astart())
            await worker.wait_connected(30)
            try:
                await _round(st, r, min(runs, 500))  # warm-up
                for label, n_pages in (("no pages", 0), (f"{pages} pages", pages),
                                       ("no pages", 0)):
                    received = [0]
                    async with httpx.AsyncClient(
                        base_url=st.api_url, cookies={"ratchet_token": st.token},
                        timeout=httpx.Timeout(10, read=None),
                        limits=httpx.Limits(max_connections=n_pages + 1),
                    ) as http:
                        streams = [asyncio.create_task(_page(http, received))
                                   for _ in range(n_pages)]
                        elapsed = await _round(st, r, runs)
                        for s in streams:
                            s.cancel()
                        for s in streams:
                            with contextlib.suppress(BaseException):
                                await s
                    print(f"{label:>10}: {runs} runs in {elapsed:.2f} s = {runs / elapsed:,.0f}"
                          f" runs/s; {received[0]} SSE events delivered", flush=True)
            finally:
                await worker.astop(drain_timeout_s=5)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
                await r.aclose()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(bench(int(sys.argv[1]) if len(sys.argv) > 1 else 3000,
                      int(sys.argv[2]) if len(sys.argv) > 2 else 50))
