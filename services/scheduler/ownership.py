"""Which scheduler partitions this scheduler holds, kept in step with the other schedulers.

Every `tick_s` a scheduler refreshes its membership row and its leases (persistence/leases.py),
computes which partitions it should hold (`assignment`: the same answer in every scheduler that
sees the same member list), hands over those it should no longer hold and takes those that
are free. The service supplies two callbacks, which run in this order so that no partition's
state is ever applied by two schedulers:

- `drop(partitions)`: stop consuming them and reload the engine without them (whatever was in
  flight for them is committed first); only then are their leases released;
- `adopt(leases)`: after the leases are taken (new epochs), reload the engine with them, then
  start consuming them.

A lease that expired or was taken over (this process was paused, or PostgreSQL was out of
reach longer than the lease) is simply lost: `drop` runs for it, and any commit still carrying
its old epoch is refused by the fence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence

import asyncpg

from services.scheduler.persistence import leases as lease_store
from services.scheduler.persistence.leases import Leases

log = logging.getLogger(__name__)

DropHook = Callable[[set[int]], Awaitable[None]]
AdoptHook = Callable[[Leases], Awaitable[None]]


def _rank(partition: int, member: str) -> bytes:
    return hashlib.blake2b(f"{partition}/{member}".encode(), digest_size=8).digest()


def assignment(count: int, members: Sequence[str]) -> dict[int, str]:
    """partition -> member: rendezvous hashing, balanced so every member holds
    floor(count / members) or one more. Deterministic for a given member list; a join or a
    leave moves few partitions besides those that must move."""
    if not members:
        return {}
    ranked = {p: sorted(members, key=lambda m: _rank(p, m), reverse=True) for p in range(count)}
    held = dict.fromkeys(members, 0)
    out: dict[int, str] = {}
    floor = count // len(members)
    for cap in (floor, floor + 1):  # the remainder goes, one each, in a second pass
        for partition in range(count):
            if partition in out:
                continue
            for member in ranked[partition]:
                if held[member] < cap:
                    held[member] += 1
                    out[partition] = member
                    break
    return out


class Ownership:
    """This scheduler's partition leases and the loop that keeps them."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        instance: str,
        count: int,
        *,
        drop: DropHook,
        adopt: AdoptHook,
        ttl_s: float = 5.0,
        tick_s: float = 1.0,
    ) -> None:
        self.instance = instance
        self.count = count
        self.leases: Leases = {}
        self.members: list[str] = []
        self._pool = pool
        self._drop = drop
        self._adopt = adopt
        self._ttl_s = ttl_s
        self._tick_s = tick_s
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()
        self._lost: set[int] = set()  # found lost by `confirm`, dropped by the next tick

    async def start(self) -> None:
        async with self._pool.acquire() as conn:
            await lease_store.ensure_partitions(conn, self.count)
        await self.tick()

    def poke(self) -> None:
        """Re-check now (a commit was fenced, or the service wants its leases confirmed)."""
        self._poke.set()

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._tick_s)
            self._poke.clear()
            if stopping.is_set():
                return
            try:
                await self.tick()
            except Exception as exc:  # PostgreSQL away: the leases run out on their own
                log.warning("partition lease tick failed: %r", exc)

    async def tick(self) -> None:
        async with self._lock, self._pool.acquire() as conn:
            self.members = await lease_store.heartbeat(
                conn, self.instance, self._ttl_s, socket.gethostname(), os.getpid()
            )
            held = await lease_store.renew(conn, self.instance, self.leases, self._ttl_s)
            lost = (set(self.leases) - set(held)) | self._lost
            self._lost = set()
            if lost:
                log.warning("partition leases lost: %s", sorted(lost))
            mine = {p for p, m in assignment(self.count, self.members).items()
                    if m == self.instance}
            handing = {p: e for p, e in held.items() if p not in mine}
            self.leases = {p: e for p, e in held.items() if p in mine}
            if lost or handing:
                await self._drop(lost | set(handing))
                await lease_store.release(conn, self.instance, handing)
                if handing:
                    log.info("handed over partitions %s", sorted(handing))
            got = await lease_store.acquire(
                conn, self.instance, sorted(mine - set(self.leases)), self._ttl_s
            )
            if got:
                self.leases.update(got)
                log.info("took partitions %s", sorted(got))
                await self._adopt(got)

    async def confirm(self) -> None:
        """Forget the leases that were lost (a commit was fenced), now, without the tick's
        lock: the core loop calls this while a tick may be waiting for it. The next tick
        stops consuming them."""
        async with self._pool.acquire() as conn:
            held = await lease_store.renew(conn, self.instance, dict(self.leases), self._ttl_s)
        lost = {p for p, e in self.leases.items() if held.get(p) != e}
        for partition in lost:
            self.leases.pop(partition, None)
        if lost:
            log.warning("partition leases lost: %s", sorted(lost))
            self._lost |= lost
            self.poke()

    async def leave(self) -> None:
        """Hand everything over at once (a graceful stop, after the last commit)."""
        async with self._lock:
            self.leases = {}
            with contextlib.suppress(Exception):
                async with self._pool.acquire() as conn:
                    await lease_store.leave(conn, self.instance)
