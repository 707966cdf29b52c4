"""A worker process for the chaos suite (it gets SIGKILLed): `python -m bench.chaos_worker WF`."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from ratchet import Context, DurableContext, Ratchet


def build(r: Ratchet, name: str):  # type: ignore[no-untyped-def]
    wf = r.workflow(name)

    @wf.task(retries=5, backoff_base=0.1, backoff_max=1.0, execution_timeout=timedelta(seconds=10))
    async def first(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        await asyncio.sleep(0.02)
        return {"i": input["i"]}

    @wf.task(parents=[first], retries=5, backoff_base=0.1, backoff_max=1.0,
             execution_timeout=timedelta(seconds=10))
    async def second(input: dict, ctx: Context) -> dict:  # type: ignore[type-arg]
        await asyncio.sleep(0.02)
        return {"i2": ctx.parent_output(first)["i"] * 2}

    # A durable sleep in every run: each fault also hits tasks parked without a slot.
    @wf.durable_task(parents=[second], execution_timeout=timedelta(seconds=60))
    async def nap(input: dict, ctx: DurableContext) -> dict:  # type: ignore[type-arg]
        start = await ctx.aio_now()
        await ctx.aio_sleep_for(timedelta(seconds=1))
        woke = await ctx.aio_now()
        return {"slept_s": (woke - start).total_seconds()}

    return wf


def build_listener(r: Ratchet, name: str):  # type: ignore[no-untyped-def]
    """A durable task parked on a signal that the chaos suite sends while it kills things."""

    @r.durable_task(name=f"{name}-sig", execution_timeout=timedelta(minutes=10))
    async def listen(input: dict, ctx: DurableContext) -> dict:  # type: ignore[type-arg]
        return {"got": await ctx.aio_wait_for_signal("go"), "attempt": ctx.attempt}

    return listen


def main() -> None:
    r = Ratchet()
    wf = build(r, sys.argv[1])
    listen = build_listener(r, sys.argv[1])
    r.worker(f"chaos-{sys.argv[1]}", workflows=[wf, listen], slots=20).start()


if __name__ == "__main__":
    main()
