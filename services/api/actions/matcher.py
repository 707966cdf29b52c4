"""Telling the matchers that a tenant's workflows or filters changed."""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from libs.common import subjects

log = logging.getLogger(__name__)


async def notify_matcher(nc: NATS, tenant: str) -> None:
    """Tell every matcher to drop the tenant's cached rules (core NATS, best effort: the
    change is committed already and the matchers' TTL is the safety net)."""
    try:
        await nc.publish(subjects.MATCHER_CHANGES, tenant.encode())
        # Flushed so the change reaches the matchers before any event we accept next.
        await nc.flush(timeout=2)
    except Exception as exc:  # the change is committed; matchers catch up on their TTL
        log.warning("matcher invalidation for %s not sent: %r", tenant, exc,
                    extra={"tenant": tenant})
