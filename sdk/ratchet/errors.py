"""Exceptions users see."""

from __future__ import annotations

from typing import Any


class RatchetError(Exception):
    """Base of every Ratchet SDK error."""


class NonRetryable(RatchetError):
    """Raise inside a task to fail it at once, without retries."""


class ConfigError(RatchetError):
    """The client is missing something it needs (an API token) or cannot reach the server."""


class ApiUnreachable(ConfigError):
    """Nothing answered at the configured API URL."""


MISSING_TOKEN = (
    "no API token: pass Ratchet(token=...) or set RATCHET_TOKEN "
    "(`make up` writes one to .run/env; `ratchet tokens create` makes more)"
)


class ApiError(RatchetError):
    """The REST API refused a request; `status` is the HTTP status, `detail` its message."""

    def __init__(self, status: int, detail: str, extra: Any = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.extra = extra


class RunFailed(RatchetError):
    """A run ended FAILED or CANCELLED. `errors` maps task name to its last error."""

    def __init__(self, run_id: str, status: str, errors: dict[str, dict[str, Any]]) -> None:
        summary = "; ".join(f"{k}: {v.get('type')}: {v.get('message')}" for k, v in errors.items())
        super().__init__(f"run {run_id} {status}" + (f" ({summary})" if summary else ""))
        self.run_id = run_id
        self.status = status
        self.errors = errors


class WorkflowDefinitionError(RatchetError, ValueError):
    """A workflow or task definition is invalid (raised at import time)."""
