"""Child runs: which active run is whose child, and what cancelling a parent does to them.

A child run is an ordinary run whose trigger names a parent run and task (the API checked
them and the depth limit; docs/children.md). The engine keeps, for every parent with active
children, the ids of those children, so that:

- when a parent run ends CANCELLED (by a user, a concurrency strategy or its own parent),
  its unfinished children are cancelled through the ordinary cancel command path: one
  `CancelRuns` message per chunk of children on the batch's outbox. Each level of the tree
  cascades the same way when its runs end cancelled, so a whole tree goes down, in batches
  bounded by what one CMD fetch carries rather than all at once;
- a child whose trigger is applied after its parent already ended cancelled (the trigger was
  in flight while the cascade ran) is cancelled as soon as it exists. A parent still in memory
  says its status itself; for one that already left memory the service looks the status up
  before the batch (`parent_to_look_up`, then `note_parent_statuses`).

A parent that fails or succeeds leaves its children running: a child started with
`run_no_wait` is fire-and-forget, and a retried parent task gets the same children back.
"""

from __future__ import annotations

from collections.abc import Callable

from libs.common import subjects
from libs.common.jetstream import Outgoing
from libs.common.messages import CancelRun, CancelRuns, TriggerRun, encode
from services.scheduler.effects import Effects
from services.scheduler.model import RUN_TERMINAL, Run, RunStatus

# Run ids per CancelRuns message: ~35 bytes each, so ~35 KB, well under NATS's max payload.
CASCADE_CHUNK = 1000


class Children:
    """The parent → active children index of the engine's runs, and the cancel cascade."""

    def __init__(self, runs: dict[str, Run], *, cancel: Callable[[str, CancelRun], None]) -> None:
        self._runs = runs
        self._cancel = cancel  # the state machine's cancel command
        self._kids: dict[str, set[str]] = {}
        # Statuses of parents no longer in memory, looked up for the current batch only.
        self._gone_parents: dict[str, str] = {}

    def children_of(self, run_id: str) -> set[str]:
        """Ids of the run's children that are active in this engine."""
        return set(self._kids.get(run_id, ()))

    def link(self, run: Run) -> None:
        """Remember an active child run (a new one, or one adopted after a restart)."""
        if run.parent_run_id is not None and run.status not in RUN_TERMINAL:
            self._kids.setdefault(run.parent_run_id, set()).add(run.id)

    # before a batch: what the service must look up -----------------------------------
    def parent_to_look_up(self, tenant: str, cmd: TriggerRun) -> tuple[str, str] | None:
        """(tenant, parent run id) when `cmd` starts a child whose parent is not in memory."""
        if cmd.parent_run_id is None or cmd.parent_run_id in self._runs:
            return None
        return tenant, cmd.parent_run_id

    def note_parent_statuses(self, statuses: dict[str, str]) -> None:
        self._gone_parents = statuses

    # during a batch ---------------------------------------------------------------------
    def triggered(self, tenant: str, cmd: TriggerRun) -> None:
        """After a trigger: link the child, and cancel it if its parent already was."""
        run = self._runs.get(cmd.run_id)
        if run is None or run.tenant != tenant or run.parent_run_id is None:
            return
        self.link(run)
        parent = self._runs.get(run.parent_run_id)
        if parent is not None and parent.tenant == tenant:
            status = parent.status.value
        else:
            status = self._gone_parents.get(run.parent_run_id, "")
        if status == RunStatus.CANCELLED.value and run.status not in RUN_TERMINAL:
            reason = f"parent run {run.parent_run_id} was cancelled"
            self._cancel(tenant, CancelRun(run_id=run.id, reason=reason))

    # after a batch ----------------------------------------------------------------------
    def after_batch(self, fx: Effects) -> None:
        """Forget finished runs; cascade the cancellation of cancelled parents."""
        for run in fx.finished_runs:
            if run.parent_run_id is not None:
                siblings = self._kids.get(run.parent_run_id)
                if siblings is not None:
                    siblings.discard(run.id)
                    if not siblings:
                        del self._kids[run.parent_run_id]
            # A parent that ended otherwise keeps its entry while its children run: a replay
            # may bring it back, and cancelling it then must still reach them.
            if run.status == RunStatus.CANCELLED:
                kids = self._kids.pop(run.id, None)
                if kids:
                    self._cascade(fx, run, sorted(k for k in kids if k in self._runs))
        self._gone_parents = {}

    def _cascade(self, fx: Effects, run: Run, kids: list[str]) -> None:
        reason = f"parent run {run.id} was cancelled"
        subject = subjects.cmd(run.tenant, "run.cancel")
        for i in range(0, len(kids), CASCADE_CHUNK):
            msg = CancelRuns(run_ids=kids[i : i + CASCADE_CHUNK], reason=reason)
            # The generation keeps a replayed parent's second cancellation from being dropped
            # as a duplicate of the first.
            msg_id = f"cascade:{run.id}:{run.generation}:{i // CASCADE_CHUNK}"
            fx.outbox.append(Outgoing(subject, encode(msg), msg_id))
