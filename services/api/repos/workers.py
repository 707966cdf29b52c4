"""Connected workers: the dispatchers' registry (a JetStream KV bucket) and their slots in use."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError

from libs.common.messages import WORKER_INFO_DECODER, WorkerInfo
from libs.common.subjects import Bucket


@dataclass(frozen=True)
class WorkerRow:
    info: WorkerInfo
    slots_used: int


class WorkerRepo:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        self._pool = pool
        self._js = js

    async def list_workers(self, tenant: str) -> list[WorkerRow]:
        """The tenant's registered workers (name order) with the slots their attempts use."""
        kv = await self._js.key_value(Bucket.WORKERS.value)
        infos: list[WorkerInfo] = []
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue  # deleted between keys() and get()
            if entry.value:
                info = WORKER_INFO_DECODER.decode(entry.value)
                if info.tenant == tenant:
                    infos.append(info)
        used = await self.slots_used(tenant)
        infos.sort(key=lambda i: (i.name, i.worker_id))
        return [WorkerRow(info=i, slots_used=used.get(i.worker_id, 0)) for i in infos]

    async def slots_used(self, tenant: str) -> dict[str, int]:
        """Worker id -> attempts it is executing."""
        rows = await self._pool.fetch(
            "SELECT worker_id, count(*) AS n FROM executing_attempts WHERE tenant_id = $1"
            " GROUP BY worker_id",
            tenant,
        )
        return {str(r["worker_id"]): int(r["n"]) for r in rows}
