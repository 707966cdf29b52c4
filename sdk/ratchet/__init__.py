"""Ratchet: durable task queue and workflow engine for AI workloads."""

from ratchet.client import Ratchet
from ratchet.context import Context
from ratchet.durable import (
    DurableContext,
    Event,
    NonDeterminism,
    ParentOutput,
    Signal,
    Sleep,
    WaitAnyResult,
    Waitpoint,
)
from ratchet.errors import ApiError, NonRetryable, RatchetError, RunFailed, WorkflowDefinitionError
from ratchet.resources import RunRef
from ratchet.types import (
    Batch,
    Concurrency,
    Debounce,
    DesiredLabel,
    RateLimit,
    Sticky,
    StickyStrategy,
    Strategy,
)
from ratchet.worker import Worker
from ratchet.workflow import Task, Workflow

__all__ = [
    "ApiError",
    "Batch",
    "Concurrency",
    "Context",
    "Debounce",
    "DesiredLabel",
    "DurableContext",
    "Event",
    "NonDeterminism",
    "NonRetryable",
    "ParentOutput",
    "Ratchet",
    "RatchetError",
    "RateLimit",
    "RunFailed",
    "RunRef",
    "Signal",
    "Sleep",
    "Sticky",
    "StickyStrategy",
    "Strategy",
    "Task",
    "WaitAnyResult",
    "Waitpoint",
    "Worker",
    "Workflow",
    "WorkflowDefinitionError",
]
