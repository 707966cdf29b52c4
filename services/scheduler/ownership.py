"""Which scheduler partitions this scheduler holds, kept in step with the other schedulers.

Every `tick_s` a scheduler refreshes its membership row and its leases (persistence/leases.py);
a second loop computes which partitions it should hold (`assignment`: the same answer in every
scheduler that sees the same member list), hands over those it should no longer hold and takes
those that are free. The service supplies two callbacks, which run in this order so that no partition's
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
    """This scheduler's partition leases and the two loops that keep them.

    The beat (every `tick_s`) only refreshes membership and renews leases, so that a slow
    hand-over (stopping consumers, reloading the engine) never lets this scheduler's
    heartbeat or leases lapse — which would make the others take its partitions and give
    them back moments later. The rebalance runs the hooks and moves partitions.
    """

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
        self.leases: Leases = {}  # held, and accepted: messages of these are applied
        self.members: list[str] = []
        self._handing: Leases = {}  # being handed over: still renewed until released
        self._lost: set[int] = set()  # lost since the last rebalance, which drops them
        self._pool = pool
        self._drop = drop
        self._adopt = adopt
        self._ttl_s = ttl_s
        self._tick_s = tick_s
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._pool.acquire() as conn:
            await lease_store.ensure_partitions(conn, self.count)
        await self.tick()

    def poke(self) -> None:
        """Rebalance now rather than at the next tick."""
        self._poke.set()

    async def tick(self) -> None:
        """One beat, then one rebalance (start-up and tests)."""
        await self.beat()
        await self.rebalance()

    async def run(self, stopping: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as loops:
            loops.create_task(self._beat_loop(stopping))
            loops.create_task(self._rebalance_loop(stopping))

    async def _beat_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._tick_s)
            if stopping.is_set():
                return
            try:
                await self.beat()
            except Exception as exc:  # PostgreSQL away: the leases run out on their own
                log.warning("partition lease renewal failed: %r", exc)
                continue
            if self._lost or set(self._wanted()) != set(self.leases):
                self.poke()

    async def _rebalance_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._tick_s)
            self._poke.clear()
            if stopping.is_set():
                return
            try:
                await self.rebalance()
            except Exception as exc:
                log.warning("partition rebalance failed: %r", exc)

    def _wanted(self) -> list[int]:
        return [p for p, m in assignment(self.count, self.members).items()
                if m == self.instance]

    async def beat(self) -> None:
        """Refresh membership, renew every lease still held; note the ones lost."""
        held_before = {**self._handing, **self.leases}
        async with self._pool.acquire() as conn:
            self.members = await lease_store.heartbeat(
                conn, self.instance, self._ttl_s, socket.gethostname(), os.getpid()
            )
            held = await lease_store.renew(conn, self.instance, held_before, self._ttl_s)
        lost = {p for p, e in held_before.items() if held.get(p) != e}
        for partition in lost:
            if self.leases.get(partition) == held_before[partition]:
                del self.leases[partition]
            if self._handing.get(partition) == held_before[partition]:
                del self._handing[partition]
        if lost:
            log.warning("partition leases lost: %s", sorted(lost))
            self._lost |= lost

    async def confirm(self) -> None:
        """Forget the leases that were lost (a commit was fenced), now. The core loop calls
        this while a rebalance may be waiting for it, so it takes no lock."""
        await self.beat()
        if self._lost:
            self.poke()

    async def rebalance(self) -> None:
        async with self._lock:
            mine = set(self._wanted())
            handing = {p: e for p, e in self.leases.items() if p not in mine}
            lost, self._lost = self._lost, set()
            if lost or handing:
                for partition in handing:
                    del self.leases[partition]
                self._handing.update(handing)
                try:
                    await self._drop(lost | set(handing))
                    async with self._pool.acquire() as conn:
                        await lease_store.release(conn, self.instance, handing)
                finally:
                    for partition in handing:
                        self._handing.pop(partition, None)
                if handing:
                    log.info("handed over partitions %s", sorted(handing))
            async with self._pool.acquire() as conn:
                got = await lease_store.acquire(
                    conn, self.instance, sorted(mine - set(self.leases)), self._ttl_s
                )
            if got:
                self.leases.update(got)
                log.info("took partitions %s", sorted(got))
                await self._adopt(got)

    async def leave(self) -> None:
        """Hand everything over at once (a graceful stop, after the last commit)."""
        async with self._lock:
            self.leases = {}
            with contextlib.suppress(Exception):
                async with self._pool.acquire() as conn:
                    await lease_store.leave(conn, self.instance)
