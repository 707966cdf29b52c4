"""Errors of the payload store. Each also derives from the builtin a caller would expect."""

from __future__ import annotations


class PayloadError(Exception):
    """Base of every payload store error."""


class PayloadTooLarge(PayloadError):
    """A payload grew past the configured limit; nothing of it was kept."""

    def __init__(self, size_so_far: int, limit: int) -> None:
        super().__init__(
            f"payload too large: at least {size_so_far} bytes, the limit is {limit} bytes"
        )
        self.size_so_far = size_so_far
        self.limit = limit

    def __reduce__(self) -> tuple[type[PayloadTooLarge], tuple[int, int]]:
        return (type(self), (self.size_so_far, self.limit))


class InvalidPayloadKey(PayloadError, ValueError):
    """A tenant, scope or key that cannot name a blob (empty, `..`, a `/`, odd characters)."""


class PayloadAccessDenied(PayloadError, PermissionError):
    """A tenant asked for a blob that belongs to another tenant."""


class PayloadNotFound(PayloadError, LookupError):
    """The referenced blob does not exist (never written, or collected)."""


class PayloadCorrupt(PayloadError):
    """The stored bytes do not match the reference's sha256 or size."""
