"""Scheduler partitions: which partition a tenant belongs to, and how many there are.

The count is fixed when the CMD stream is created: the CMD and TASK streams carry it in the
subject transforms that file commands and worker reports under the tenant's partition
(subjects.py), and nats-server computes the partition as they are stored. `partition_of` is
the same function (FNV-1a of the tenant token, modulo the count) for the scheduler's own use;
PostgreSQL has it too (`ratchet_partition`, migration 060).
"""

from __future__ import annotations

import functools

from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from libs.common import subjects
from libs.common.settings import Settings
from libs.common.subjects import Stream


@functools.lru_cache(maxsize=65536)  # asked for every message a scheduler takes; tenants repeat
def partition_of(tenant: str, count: int) -> int:
    """FNV-1a (32 bit) of the tenant token, modulo `count`: nats-server's `partition()`."""
    h = 0x811C9DC5
    for byte in tenant.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h % count


def count_in(dest: str) -> int | None:
    """The partition count of a subject transform destination (None: not partitioned)."""
    _, sep, rest = dest.partition("{{partition(")
    return int(rest.split(",", 1)[0]) if sep else None


async def count(js: JetStreamContext, settings: Settings) -> int:
    """The cluster's partition count: the CMD stream's when it exists, else the configured one."""
    try:
        info = await js.stream_info(Stream.CMD.value)
    except NotFoundError:
        return settings.partitions
    transform = info.config.subject_transform
    found = count_in(transform.dest) if transform is not None and transform.dest else None
    return found or settings.partitions


async def transform(
    js: JetStreamContext, stream: Stream, settings: Settings
) -> jsapi.SubjectTransform | None:
    """The subject transform a stream is created with (None for streams not partitioned).
    An existing stream keeps its count: changing it would move tenants between partitions
    under running schedulers."""
    if stream is Stream.CMD:
        source, dest = subjects.CMD_PARTITION_SOURCE, subjects.cmd_partition_dest
    elif stream is Stream.TASK:
        source, dest = subjects.REPORT_PARTITION_SOURCE, subjects.report_partition_dest
    else:
        return None
    return jsapi.SubjectTransform(src=source, dest=dest(await count(js, settings)))
