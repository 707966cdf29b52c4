"""The batch being applied: its clock and the Effects it collects.

One `Batch` is shared by the state machine and the helpers that record effects or read
the time (admission, durable tasks, recovery): the machine moves it on (`begin`, `take`),
the helpers only read `now_ms` and add to `fx`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.scheduler.effects import Effects


@dataclass(slots=True, eq=False)
class Batch:
    now_ms: int = 0
    fx: Effects = field(default_factory=Effects)

    def begin(self, now_ms: int) -> None:
        self.now_ms = now_ms
        self.fx = Effects()

    def take(self) -> Effects:
        """Hand over the batch's effects and start collecting afresh."""
        fx, self.fx = self.fx, Effects()
        return fx
