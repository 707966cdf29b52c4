"""Commands of flow control (docs/flow-control.md), on `cmd.<tenant>.flow.<verb>` subjects.

They travel on the CMD stream with the triggers, so the scheduler that owns the tenant sees a
pause before every trigger published after it. Kept apart from `messages.Command`: the
scheduler tells them by subject (`FLOW_VERB_PREFIX`) and decodes them with `FLOW_DECODER`.
"""

from __future__ import annotations

import msgspec

FLOW_VERB_PREFIX = "flow."
PAUSE_VERB = "flow.pause"
RESUME_VERB = "flow.resume"
DUE_VERB = "flow.due"


class PauseWorkflow(msgspec.Struct, tag="pause", kw_only=True):
    """New runs of `workflow` are held (`mode` "queue") or skipped ("drop") until resumed."""

    workflow: str
    mode: str  # queue | drop
    pause_id: str  # unique per pause: the msg-id


class ResumeWorkflow(msgspec.Struct, tag="resume", kw_only=True):
    """Start the runs held while `workflow` was paused; new ones start at once again."""

    workflow: str
    pause_id: str


class FlowDue(msgspec.Struct, tag="flow_due", kw_only=True):
    """A debounce window or batch (`run_id`) was opened or filled through the API: the
    scheduler arms a timer for `due_ms` (the row in PostgreSQL stays the truth)."""

    run_id: str
    due_ms: int


FlowCommand = PauseWorkflow | ResumeWorkflow | FlowDue
FLOW_DECODER = msgspec.msgpack.Decoder(FlowCommand)
