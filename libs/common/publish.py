"""Publishing batches to JetStream: pipelined, acked, and isolating what NATS refuses.

`AckedPublisher` sends each message of a batch with a reply subject `<inbox>.<batch>-<index>`
under one wildcard subscription and reads the acks itself. Two reasons:

- cost: nats-py's `publish_async` draws random bytes for a token, creates and registers a
  future and parses every ack into a PubAck per message; at the matcher's rate that
  bookkeeping cost more than the publishing (measured: ~25 µs against ~9 µs of client CPU per
  message). Here an ack is counted, and decoded only when it reports an error;
- refusals: nats-py 2.16 never completes the future of a publish the stream refuses
  (`_handle_async_reply` raises the APIError instead of setting it), so through
  `publish_async` a refused message looks like an ack that never came. Here every message has
  its own answer.

`IsolatingPublisher` publishes a batch so that a message NATS refuses for what it is (larger
than the server's max payload or the stream's max_msg_size, rejected for its content) cannot
hold back the others; retried as is, it would be refused forever and block every message
queued behind it, for every tenant. It:

1. publishes the batch pipelined, each message with its msg-id, and reads every answer;
2. retries what failed for a passing reason (a NATS restart, acks that never came, no stream
   yet) with the policy of libs/common/retry.py and the same msg-ids, so the stream drops
   what it already stored;
3. sets each refused message aside: what stands in for it (libs/common/stand_ins.py, e.g. a
   failed-for-good report per assignment it carried) is published the same way, and one that
   nothing stands in for is dead-lettered to `dlq.<subject>` with the reason.

Order: the accepted messages are stored in batch order; stand-ins and dead letters follow the
batch (the messages behind a refused one were stored before the refusal was known).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.common import retry, subjects
from libs.common.jetstream import Outgoing
from libs.common.stand_ins import stand_ins
from libs.common.subjects import Header

log = logging.getLogger(__name__)

_MSG_ID = Header.MSG_ID.value
_STATUS = "Status"  # nats-py's header for a status line (503: no stream for the subject)
_NO_RESPONDERS = "503"
# Rounds of stand-ins: a report batch is split (1), a single report still refused fails its
# attempt (2); whatever is refused after that is dead-lettered, so refusals cannot loop.
STAND_IN_ROUNDS = 2

Problems = dict[int, Exception]  # by index in the batch; empty when every message was stored


class PublishError(RuntimeError):
    """The stream refused at least one message of a batch."""


class Refused(PublishError):
    """The stream refused this message for what it is; publishing it again will not help."""

    def __init__(self, code: int | None, err_code: int | None, description: str) -> None:
        super().__init__(f"{code} {description} (err_code {err_code})")
        self.code = code
        self.err_code = err_code
        self.description = description


class NoStream(nats.js.errors.NoStreamResponseError):
    """No stream listens on the subject (yet: retried like a server that is not up)."""

    def __str__(self) -> str:
        return "no stream listens on this subject"


@dataclass(slots=True)
class _Batch:
    size: int
    acked: bytearray = field(init=False)  # one flag per message: a duplicate ack counts once
    remaining: int = field(init=False)
    problems: Problems = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.acked = bytearray(self.size)
        self.remaining = self.size

    def answer(self, index: int, problem: Exception | None) -> None:
        if self.acked[index]:
            return
        self.acked[index] = 1
        if problem is not None:
            self.problems[index] = problem
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


class AckedPublisher:
    """Publishes batches pipelined and waits for every message's answer from its stream."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Subscription | None = None
        self._batches: dict[int, _Batch] = {}
        self._numbers = itertools.count()

    async def start(self) -> None:
        """Subscribe to the acks. Idempotent."""
        if self._sub is None:
            self._prefix = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)

    async def stop(self) -> None:
        """Idempotent; batches still waiting end with their timeout."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def publish_batch(self, batch: Sequence[Outgoing], timeout_s: float = 10.0) -> None:
        """Return once the stream acked every message; raise if any was refused or if the
        acks did not all arrive within the timeout (a NATS restart loses the acks of messages
        sent just before it). Retry with the same msg-ids: the stream drops what it has."""
        problems = await self.publish(batch, timeout_s)
        if not problems:
            return
        not_acked = sum(1 for p in problems.values() if isinstance(p, TimeoutError))
        if not_acked:
            raise TimeoutError(f"{not_acked} of {len(batch)} publishes were not acked")
        first = problems[min(problems)]
        raise PublishError(f"{len(problems)} of {len(batch)} publishes refused; first: {first}")

    async def publish(self, batch: Sequence[Outgoing], timeout_s: float = 10.0) -> Problems:
        """Publish pipelined; what went wrong, by index: `Refused` (the stream said no),
        MaxPayloadError (nats-py said no), TimeoutError (no answer in time), or an error of
        a passing kind (`retry.transient`). Empty when every message was stored (or dropped
        as the duplicate of a stored one)."""
        if not batch:
            return {}
        if self._sub is None:
            raise RuntimeError("AckedPublisher.publish before start()")
        number = next(self._numbers)
        pending = _Batch(len(batch))
        self._batches[number] = pending
        reply = f"{self._prefix}.{number}-"
        try:
            async with asyncio.timeout(timeout_s):
                for index, item in enumerate(batch):
                    headers = {_MSG_ID: item.msg_id, **item.headers} if item.headers \
                        else {_MSG_ID: item.msg_id}
                    try:
                        await self._nc.publish(item.subject, item.payload,
                                               reply=f"{reply}{index}", headers=headers)
                    except (TimeoutError, asyncio.CancelledError):
                        raise
                    except Exception as exc:  # refused before sending, or no connection
                        pending.answer(index, exc)
                await pending.done.wait()
        except TimeoutError:
            not_acked = TimeoutError(f"not acked within {timeout_s} s")
            for index in range(pending.size):
                pending.answer(index, not_acked)
        finally:
            del self._batches[number]
        return pending.problems

    async def _on_ack(self, msg: Msg) -> None:
        number, _, index = msg.subject.rpartition(".")[2].partition("-")
        try:
            pending = self._batches.get(int(number))
            position = int(index)
        except ValueError:
            return
        if pending is None or not 0 <= position < pending.size:
            return  # a batch that already gave up
        pending.answer(position, _ack_problem(msg))


def _ack_problem(msg: Msg) -> Exception | None:
    """None for a PubAck; otherwise what the server said instead."""
    data = msg.data
    if not data:
        status = (msg.headers or {}).get(_STATUS, "")
        if status == _NO_RESPONDERS:
            return NoStream()
        return nats.js.errors.ServiceUnavailableError(
            description=f"empty reply (status {status or 'none'})")
    if b'"error"' not in data:  # a PubAck: {"stream": ..., "seq": ...}; skip decoding it
        return None
    try:
        reply = json.loads(data)
    except ValueError:
        return nats.js.errors.ServiceUnavailableError(description=f"unreadable {data[:100]!r}")
    error = reply.get("error") if isinstance(reply, dict) else None
    if not error:
        return None  # "error" appeared in a value (a stream named so), not as the key
    if not isinstance(error, dict):
        return Refused(None, None, str(error))
    code, err_code = error.get("code"), error.get("err_code")
    description = str(error.get("description", ""))
    if code == 503:  # JetStream not available right now (a leader election...)
        return nats.js.errors.ServiceUnavailableError(code=code, err_code=err_code,
                                                      description=description)
    return Refused(code, err_code, description)


class IsolatingPublisher:
    """Publishes batches with msg-ids; a message NATS refuses is set aside, the rest flow.

    Args:
        nc: the service's connection (one ack subscription is added on first use; it ends
            with the connection).
        site: names the retries in logs and in `ratchet_infra_retries_total`.
        retry_s: how long a batch is retried through passing failures before `publish` raises.
        until: stop retrying at once when set (the service is stopping).
        ack_timeout_s: how long one attempt waits for the stream's acks.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        site: str,
        retry_s: float,
        until: asyncio.Event | None = None,
        ack_timeout_s: float = 10.0,
    ) -> None:
        self._acks = AckedPublisher(nc)
        self._site = site
        self._retry_s = retry_s
        self._until = until
        self._ack_timeout_s = ack_timeout_s
        self.set_aside = 0  # refused messages, since start
        self.dead_lettered = 0

    async def stop(self) -> None:
        """Idempotent (the subscription also ends when the connection closes)."""
        await self._acks.stop()

    async def publish(self, batch: Sequence[Outgoing]) -> None:
        """Return once every message of `batch` is stored, or set aside with its stand-ins
        stored or dead-lettered.

        Raises:
            Exception: the error the retry policy gave up on (NATS unreachable for
                `retry_s`, or stopping). Publish the batch again later with the same msg-ids:
                nothing is lost and nothing is stored twice.
        """
        await self._acks.start()
        pending: Sequence[Outgoing] = batch
        for round_ in range(STAND_IN_ROUNDS + 1):
            if not pending:
                return
            instead: list[Outgoing] = []
            for item, error in await self._publish_retrying(pending):
                self.set_aside += 1
                replacements = stand_ins(item, error) if round_ < STAND_IN_ROUNDS else []
                if replacements:
                    log.warning("%s: NATS refused %s (%d bytes, %s); publishing %d in its place",
                                self._site, item.msg_id, len(item.payload), error,
                                len(replacements))
                    instead.extend(replacements)
                else:
                    await self._dead_letter(item, error)
            pending = instead

    async def _publish_retrying(self, batch: Sequence[Outgoing]) -> list[tuple[Outgoing, Exception]]:
        """Publish until every message is stored or refused; the refused, in batch order."""
        refused: dict[int, Exception] = {}

        async def attempt() -> None:
            todo = list(range(len(batch))) if not refused else [
                i for i in range(len(batch)) if i not in refused
            ]
            problems = await self._acks.publish(
                batch if not refused else [batch[i] for i in todo], self._ack_timeout_s
            )
            passing: Exception | None = None
            for position, error in problems.items():
                if retry.transient(error):
                    passing = passing or error
                else:
                    refused[todo[position]] = error
            if passing is not None:
                raise passing  # retried: the whole rest again, the stream drops what it has

        await retry.call(self._site, attempt, timeout_s=self._retry_s, until=self._until)
        return [(batch[i], refused[i]) for i in sorted(refused)]

    async def _dead_letter(self, item: Outgoing, error: Exception) -> None:
        """Keep a refused message in the DLQ stream with the reason; one too large for that
        too is kept without its body, so the record of what was refused survives."""
        reason = f"refused by NATS: {error}"
        log.error("%s: NATS refused %s on %s (%d bytes, %s); dead-lettered", self._site,
                  item.msg_id, item.subject, len(item.payload), error)
        headers = {k: v for k, v in item.headers.items() if k != _MSG_ID}
        headers[Header.DLQ_SUBJECT.value] = item.subject
        headers[Header.DLQ_REASON.value] = reason[:500]
        letter = Outgoing(subjects.dlq(item.subject), item.payload, f"dlq:{item.msg_id}", headers)
        refused = await self._publish_retrying([letter])
        if refused:
            headers[Header.DLQ_REASON.value] = (
                f"{reason} (body of {len(item.payload)} bytes dropped: {refused[0][1]})"
            )[:500]
            bodiless = Outgoing(letter.subject, b"", letter.msg_id + ":bodiless", headers)
            if await self._publish_retrying([bodiless]):
                log.error("%s: %s could not be dead-lettered either", self._site, item.msg_id)
                return
        self.dead_lettered += 1
