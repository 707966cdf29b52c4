"""Domain errors the repositories raise; app.py turns each into its HTTP status.

Repositories and actions (services/api/actions/) know nothing of HTTP: a write that must
abort inside its transaction (an unknown version, a name already taken) raises one of these and
the transaction rolls back; an action refusing a request raises one too.
"""

from __future__ import annotations

from typing import Any


class RepoError(Exception):
    """Base class; the message is shown to the caller as the response detail, and `extra`
    (when given) as the body's `extra`, for programs (e.g. a CEL error's position)."""

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.extra = extra


class NotFound(RepoError):
    """The thing named does not exist for this tenant (404)."""


class Conflict(RepoError):
    """The write clashes with existing state (409)."""


class Invalid(RepoError):
    """The request refers to state that makes it unacceptable (400)."""


class Unavailable(RepoError):
    """A backing store cannot answer right now (503)."""


class TooMany(RepoError):
    """A bounded collection is full (429): e.g. a run's inbox of signals."""


class TooLarge(RepoError):
    """A body over the size the operation takes (413)."""


class Forbidden(RepoError):
    """A credential that does not allow this (403): e.g. a bad waitpoint signature."""


class Gone(RepoError):
    """The thing existed but can no longer be used (410): e.g. an expired waitpoint."""
