"""Who may hold a worker stream: token and `worker` scope at connect, per-tenant workers and
slots limits, and ending streams whose token is revoked or expires (within AUTH_RECHECK_S plus
the token cache's TTL, so a revocation takes effect in under 2 s)."""

from __future__ import annotations

import asyncio
import logging

import grpc
from nats.js.kv import KeyValue

from libs.common import limits, tokens
from libs.common.tokens import Principal, Scope
from services.dispatcher.streams import WorkerConn

log = logging.getLogger(__name__)

# How often connected workers' tokens are re-checked (expiry, and revocations whose broadcast
# was missed): with the token cache's TTL this keeps the 2 s revocation promise.
AUTH_RECHECK_S = 0.5


class WorkerAuth:
    """Mixed into DispatcherService, which owns the state declared here."""

    _tokens: tokens.TokenCache | None
    _limits: limits.LimitCache | None
    _kv: KeyValue | None
    _principals: dict[WorkerConn, tuple[str, Principal]]
    _auth_lost: dict[WorkerConn, str]
    _stopping: asyncio.Event

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> tuple[str, Principal]:
        """The caller's live token with the `worker` scope, or the call is aborted."""
        assert self._tokens is not None
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[7:].strip()
        principal = await self._tokens.principal(token) if token else None
        if principal is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "missing, unknown, revoked or expired token"
            )
        assert principal is not None
        if not principal.allows(Scope.WORKER):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this token lacks the 'worker' scope"
            )
        return token, principal

    async def _admit(
        self, context: grpc.aio.ServicerContext, tenant: str, worker_id: str, slots: int
    ) -> None:
        """RESOURCE_EXHAUSTED when this worker would take the tenant over its workers or
        slots limit (counted across every dispatcher, from the workers registry)."""
        assert self._limits is not None and self._kv is not None
        current = await self._limits.get(tenant)
        if current.workers is None and current.slots is None:
            return
        workers, used = await limits.worker_usage(self._kv, tenant, exclude=worker_id)
        over: tuple[limits.Limit, int, int] | None = None
        if current.workers is not None and workers + 1 > current.workers:
            over = (limits.Limit.WORKERS, current.workers, workers)
        elif current.slots is not None and used + slots > current.slots:
            over = (limits.Limit.SLOTS, current.slots, used)
        if over is None:
            return
        limit, value, usage = over
        context.set_trailing_metadata((
            ("ratchet-limit", limit.value), ("ratchet-limit-value", str(value)),
            ("ratchet-limit-usage", str(usage)), ("retry-after", "5"),
        ))
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"over {limit.value}={value} (in use: {usage}; this worker asks for "
            f"{1 if limit is limits.Limit.WORKERS else slots})",
        )

    def _end_unauthenticated(self, conn: WorkerConn, reason: str) -> None:
        if conn not in self._auth_lost:
            log.info("worker %s disconnected: %s", conn.info.worker_id, reason,
                     extra={"tenant": conn.info.tenant, "worker_id": conn.info.worker_id})
        self._auth_lost[conn] = reason
        conn.closed.set()

    async def _on_token_revoked(self, token_id: str) -> None:
        for conn, (_, principal) in list(self._principals.items()):
            if principal.token_id == token_id:
                self._end_unauthenticated(conn, "token revoked")

    async def _auth_loop(self) -> None:
        """End the streams of workers whose token expired or was revoked meanwhile."""
        assert self._tokens is not None
        while not self._stopping.is_set():
            await asyncio.sleep(AUTH_RECHECK_S)
            for conn, (token, principal) in list(self._principals.items()):
                if principal.expired():
                    self._end_unauthenticated(conn, "token expired")
                    continue
                try:
                    live = await self._tokens.principal(token)
                except Exception as exc:  # PostgreSQL away: keep the worker, try again
                    log.warning("token re-check failed: %r", exc)
                    break
                if live is None:
                    self._end_unauthenticated(conn, "token revoked or expired")
