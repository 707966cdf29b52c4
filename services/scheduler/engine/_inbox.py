"""A run's inbox: the signals and waitpoint completions sent to it (docs/interaction.md).

A message for a run (`messages.SignalRun`) goes at once to the earliest-registered pending
durable wait of the run that asks for it — a `{"signal": name}` condition for a signal, a
`{"waitpoint": id}` one for a waitpoint's completion. With no such wait it stays in the
run's inbox, in the order the scheduler received it, until a wait asks (`take`, called when
the wait is first recorded). Either way it is delivered once: the wait's log entry records
the payload in the same batch that marks the message delivered, and a replay of the task
reads the log, not the inbox.

Exactly once across redeliveries: every message carries a unique id; the ids of a run's
latest SEEN_PER_RUN messages are kept (memory, and `run_inbox` in PostgreSQL, read back after
a restart), so a command redelivered after its batch committed changes nothing. At most `MAX_PENDING_SIGNALS`
messages wait per run; past that the scheduler marks them refused (the API already refuses
more with a 429, this is for sends racing each other). A run replayed with `r.runs.replay`
starts its reset durable tasks on a fresh log; what they had taken is not sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libs.common.messages import MAX_PENDING_SIGNALS, SignalRun
from services.scheduler.engine._batch import Batch
from services.scheduler.model import RUN_TERMINAL, Run, Task
from services.scheduler.records import DELIVERED, PENDING, REFUSED, SENT, Entry, InboxItem

# What a message is addressed to, and what a wait condition asks for: (kind, name).
Address = tuple[str, str]
KINDS = ("signal", "waitpoint")
# Ids of a run's latest messages kept to recognise a redelivered command. A redelivery comes
# within the CMD consumer's ack wait of the original, never thousands of messages later.
SEEN_PER_RUN = 10_000


def asks_for(cond: dict[str, Any]) -> Address | None:
    for kind in KINDS:
        if kind in cond:
            return kind, str(cond[kind])
    return None


class Inbox:
    """Messages sent to this scheduler's runs that no wait has taken yet."""

    def __init__(
        self,
        batch: Batch,
        runs: dict[str, Run],
        *,
        pending_waits: Callable[[Task], list[Entry]],
        deliver: Callable[[Task, Entry, int, bytes], None],
    ) -> None:
        self._batch = batch
        self._runs = runs
        self._pending_waits = pending_waits  # the task's pending waits (_durable.py)
        self._deliver = deliver  # complete a wait with (condition index, payload)
        self.waiting: dict[str, list[InboxItem]] = {}  # run id -> messages, in seq order
        # run id -> ids of its latest messages (insertion-ordered, at most SEEN_PER_RUN)
        self.seen: dict[str, dict[str, None]] = {}
        self.next_seq: dict[str, int] = {}
        self.writes: dict[tuple[str, str, str], InboxItem] = {}

    def receive(self, tenant: str, msg: SignalRun) -> None:
        """A message sent to a run: to a wait asking for it, else into the inbox."""
        run = self._runs.get(msg.run_id)
        if run is None or run.tenant != tenant or run.status in RUN_TERMINAL:
            return  # finished meanwhile (the API refuses finished runs; this one raced it)
        seen = self.seen.setdefault(run.id, {})
        if msg.signal_id in seen:
            return  # redelivered after its batch committed
        _remember(seen, msg.signal_id)
        seq = self.next_seq.get(run.id, 0)
        self.next_seq[run.id] = seq + 1
        item = InboxItem(tenant, run.id, msg.signal_id, seq, msg.kind, msg.name, msg.payload,
                         SENT, self._batch.now_ms)
        address = (msg.kind, msg.name)
        waits = [
            (e.registered_ms, task.id, e.position, index, task, e)
            for task in run.tasks.values() if task.spec.durable
            for e in self._pending_waits(task)
            for index, cond in enumerate(e.conds) if asks_for(cond) == address
        ]
        if waits:
            _, _, _, index, task, e = min(waits, key=lambda w: w[:4])
            self._delivered(item, e)
            self._deliver(task, e, index, item.payload)
        elif len(self.waiting.get(run.id, ())) >= MAX_PENDING_SIGNALS:
            item.status = REFUSED
        else:
            self.waiting.setdefault(run.id, []).append(item)
        self._touch(item)

    def take(self, task: Task, e: Entry) -> tuple[int, bytes] | None:
        """A wait just recorded: the oldest waiting message it asks for, if any, as
        (condition index, payload); the message is delivered to it."""
        if e.status != PENDING or e.position < 0:
            return None
        wants = {a: i for i, c in reversed(list(enumerate(e.conds))) if (a := asks_for(c))}
        queue = self.waiting.get(task.run_id)
        if not wants or not queue:
            return None
        for n, item in enumerate(queue):
            index = wants.get((item.kind, item.name))
            if index is not None:
                del queue[n]
                self._delivered(item, e)
                self._touch(item)
                return index, item.payload
        return None

    def _delivered(self, item: InboxItem, e: Entry) -> None:
        item.status = DELIVERED
        item.task_id = e.task_id
        item.position = e.position
        item.delivered_ms = self._batch.now_ms

    def _touch(self, item: InboxItem) -> None:
        self.writes[(item.tenant, item.run_id, item.id)] = item

    def take_writes(self) -> dict[tuple[str, str, str], InboxItem]:
        out, self.writes = self.writes, {}
        return out

    def forget(self, run_id: str) -> None:
        """The run finished: what is still waiting stays in PostgreSQL, undelivered."""
        self.waiting.pop(run_id, None)
        self.seen.pop(run_id, None)
        self.next_seq.pop(run_id, None)

    def restore(self, item: InboxItem) -> None:
        """A row read back after a restart, in seq order per run."""
        _remember(self.seen.setdefault(item.run_id, {}), item.id)
        self.next_seq[item.run_id] = max(self.next_seq.get(item.run_id, 0), item.seq + 1)
        if item.status == SENT:
            self.waiting.setdefault(item.run_id, []).append(item)


def _remember(seen: dict[str, None], message_id: str) -> None:
    seen[message_id] = None
    if len(seen) > SEEN_PER_RUN:
        del seen[next(iter(seen))]
