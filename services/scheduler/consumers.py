"""The scheduler's JetStream consumers: two per partition it holds.

The CMD and TASK streams file commands and worker reports under the tenant's partition
(libs/common/subjects.py), so each partition has its own durable consumers, `scheduler-cmd-<p>`
and `scheduler-reports-<p>`. Whoever holds a partition binds to them; a new holder picks up
exactly where the last one acked, with nothing skipped and nothing delivered to two holders
at once (the old holder stops consuming before it releases the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext

from libs.common import subjects
from libs.common.jetstream import MIN_PULL_BYTES, BatchConsumer, BatchHandler
from libs.common.subjects import Stream

log = logging.getLogger(__name__)

# Before partitions, one consumer of each kind took every tenant's messages.
LEGACY_DURABLES = ((Stream.CMD, "scheduler-cmd"), (Stream.TASK, "scheduler-reports"))
# An idle partition renews its pull request this often (messages arrive at once regardless).
IDLE_PULL_S = 5.0
# What a scheduler that died had fetched and not acked goes to the partition's next holder
# after this long. Batches held longer are kept alive by in-progress acks (BatchConsumer).
ACK_WAIT_S = 8.0


def durables(partition: int) -> list[tuple[Stream, str]]:
    return [
        (Stream.CMD, f"scheduler-cmd-{partition}"),
        (Stream.TASK, f"scheduler-reports-{partition}"),
    ]


class PartitionConsumers:
    """Starts and stops the consumers of the partitions this scheduler holds."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        on_commands: BatchHandler,
        on_reports: BatchHandler,
        max_deliver: int,
    ) -> None:
        self._js = js
        self._on_commands = on_commands
        self._on_reports = on_reports
        self._max_deliver = max_deliver
        self._by_partition: dict[int, list[BatchConsumer]] = {}

    @property
    def partitions(self) -> list[int]:
        return sorted(self._by_partition)

    async def remove_legacy(self) -> None:
        """Delete the unpartitioned consumers an earlier version left (they would keep
        unacked messages pending, and their filters no longer match what is stored)."""
        for stream, durable in LEGACY_DURABLES:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(stream.value, durable)

    async def start(self, partitions: list[int]) -> None:
        for partition in partitions:
            if partition in self._by_partition:
                continue
            (cmd_stream, cmd_durable), (task_stream, task_durable) = durables(partition)
            # A pull brings at most MIN_PULL_BYTES: report batches carry outputs (up to 512 KiB
            # a message), so 1,000 of them fetched by a scheduler catching up could be ~500 MB.
            pair = [
                BatchConsumer(
                    self._js, stream=cmd_stream, durable=cmd_durable,
                    filter_subject=subjects.cmd_partition(partition),
                    handler=self._on_commands, batch_size=500, max_deliver=self._max_deliver,
                    fetch_timeout_s=IDLE_PULL_S, ack_wait_s=ACK_WAIT_S, max_bytes=MIN_PULL_BYTES,
                ),
                BatchConsumer(
                    self._js, stream=task_stream, durable=task_durable,
                    filter_subject=subjects.reports_partition(partition),
                    handler=self._on_reports, batch_size=1000, max_deliver=self._max_deliver,
                    fetch_timeout_s=IDLE_PULL_S, ack_wait_s=ACK_WAIT_S, max_bytes=MIN_PULL_BYTES,
                ),
            ]
            self._by_partition[partition] = pair
            for consumer in pair:
                await consumer.start()

    async def stop(self, partitions: list[int] | None = None) -> None:
        """Stop consuming (all when `partitions` is None); batches in hand finish first.

        Together, not one by one: each consumer notices the stop within its 0.5 s poll, and
        two per partition in turn kept a scheduler's stop waiting 6-8 s.
        """
        chosen = self.partitions if partitions is None else partitions
        stopping = [c for p in chosen for c in self._by_partition.pop(p, [])]
        async with asyncio.TaskGroup() as group:
            for consumer in stopping:
                group.create_task(consumer.stop())
