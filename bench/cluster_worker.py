"""The workflows of `make chaos-cluster` and a worker process serving them for several tenants.

    python -m bench.cluster_worker TENANTS_JSON TAG INDEX

TENANTS_JSON names a file `[{"tenant": ..., "token": ...}, ...]`; the process runs one SDK
worker per tenant (RATCHET_GRPC_ADDR lists every dispatcher, so each fails over between them).
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ratchet import Context, Ratchet, Workflow

from bench.chaos_worker import build as build_nap

SLOTS = 20
# Each plain task takes this long, so that runs are in flight when a fault strikes.
TASK_S = 0.3
EXECUTION_TIMEOUT = timedelta(seconds=120)


@dataclass(frozen=True, slots=True)
class Names:
    """The workflow names of one chaos run (`tag` keeps runs of earlier sessions apart)."""

    tag: str

    @property
    def dag(self) -> str:
        return f"{self.tag}-dag"

    @property
    def parent(self) -> str:
        return f"{self.tag}-parent"

    @property
    def child(self) -> str:
        return f"{self.tag}-child"

    @property
    def nap(self) -> str:
        return f"{self.tag}-nap"

    @property
    def evt(self) -> str:
        return f"{self.tag}-evt"

    @property
    def event_key(self) -> str:
        return f"{self.tag}.evt"


def build(r: Ratchet, names: Names) -> dict[str, Workflow]:
    """Every workflow of the mix, by kind: dag, parent (spawns child), nap (durable), evt."""
    dag = r.workflow(names.dag)

    @dag.task(retries=5, backoff_base=0.1, backoff_max=1.0,
             execution_timeout=EXECUTION_TIMEOUT)
    async def first(input: dict[str, Any], ctx: Context) -> dict[str, int]:
        await asyncio.sleep(TASK_S)
        return {"i": int(input["i"])}

    @dag.task(parents=[first], retries=5, backoff_base=0.1, backoff_max=1.0,
             execution_timeout=EXECUTION_TIMEOUT)
    async def second(input: dict[str, Any], ctx: Context) -> dict[str, int]:
        await asyncio.sleep(TASK_S)
        return {"i2": ctx.parent_output(first)["i"] * 2}

    child = r.workflow(names.child)

    @child.task(retries=5, backoff_base=0.1, backoff_max=1.0,
             execution_timeout=EXECUTION_TIMEOUT)
    async def leaf(input: dict[str, Any], ctx: Context) -> dict[str, int]:
        await asyncio.sleep(TASK_S)
        return {"i": int(input["i"])}

    parent = r.workflow(names.parent)

    # A retried attempt gets the same child run back (the k-th spawn of every attempt).
    @parent.task(retries=5, backoff_base=0.1, backoff_max=1.0,
             execution_timeout=EXECUTION_TIMEOUT)
    async def spawn(input: dict[str, Any], ctx: Context) -> dict[str, int]:
        out = await child.aio_run({"i": int(input["i"])}, timeout_s=EXECUTION_TIMEOUT.seconds)
        return {"child_i": int(out["leaf"]["i"])}

    evt = r.workflow(names.evt, on_events=[names.event_key])

    @evt.task(retries=5, backoff_base=0.1, backoff_max=1.0,
             execution_timeout=EXECUTION_TIMEOUT)
    async def on_event(input: dict[str, Any], ctx: Context) -> dict[str, int]:
        await asyncio.sleep(TASK_S)
        return {"ev": int(input["ev"])}

    # first -> second -> nap (a 1 s durable sleep): bench/chaos_worker.py, checked by its verify.
    nap = build_nap(r, names.nap)
    return {"dag": dag, "parent": parent, "child": child, "nap": nap, "evt": evt}


async def serve(tenants: list[dict[str, str]], names: Names, index: int) -> None:
    """One SDK worker per tenant in this process, until SIGTERM/SIGKILL."""
    clients = [Ratchet(token=t["token"]) for t in tenants]
    workers = [
        r.worker(f"cluster-{index}", workflows=list(build(r, names).values()), slots=SLOTS)
        for r in clients
    ]
    async with asyncio.TaskGroup() as tg:
        for w in workers:
            tg.create_task(w.astart())


def main() -> None:
    tenants = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(serve(tenants, Names(sys.argv[2]), int(sys.argv[3])))


if __name__ == "__main__":
    main()
