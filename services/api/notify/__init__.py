"""The notifier: run callbacks and alerts, inside the API service.

Why here: the API owns what it needs (hooks, rules, callback URLs, the signing secret, the
delivery log) and already speaks HTTP; the scheduler must never wait on someone's web server.
The notifier hears of runs that ended the way every other reader does, as a durable JetStream
consumer of the scheduler's state changes (`task.*.changes`), so nothing is missed while no
API runs, and APIs scale out by sharing the consumer.

Three loops, each bounded:
- the consumer turns each batch of ended runs into queued deliveries (callbacks) and counts
  (failed runs into alert groups) and acks after they are written: a redelivered batch adds
  nothing (delivery ids and counted runs are remembered);
- the deliverer claims due deliveries from PostgreSQL (at most `delivery_concurrency` at a
  time, `FOR UPDATE SKIP LOCKED` so replicas share the work) and sends them, rescheduling a
  failure with exponential backoff until `delivery_retry_for_s` (24 h) has passed;
- the sweeper closes alert groups whose window has passed into messages, and every
  `alert_check_interval_s` looks for workflows with no worker and tokens about to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from cachetools import TTLCache
from nats.aio.msg import Msg

from libs.common import metrics
from libs.common.jetstream import BatchConsumer, Rejected
from libs.common.messages import RUN_CHANGES_DECODER
from libs.common.statuses import RUN_TERMINAL
from libs.common.subjects import TASK_CHANGES_ALL, Stream
from services.api.actions import alerts, callbacks
from services.api.notify._send import (
    SendFailed,
    SmtpConfig,
    backoff_s,
    post,
    post_signed,
    send_email,
)
from services.api.state import ApiState

log = logging.getLogger(__name__)

DURABLE = "api-notify"
PRUNE_EVERY_S = 3600.0
KEEP_FINISHED_S = 7 * 24 * 3600.0  # delivered or failed deliveries, closed alert groups
KEEP_CALLBACK_URLS_S = 60 * 24 * 3600.0  # a run's callback_url, from its trigger
FACT_BACKOFF_S = (0.5, 2.0, 5.0, 15.0, 60.0)
FACT_MAX_DELIVER = 1500  # ~25 h at the last step


class Notifier:
    """Start with `start()`, stop with `stop()` (idempotent, safe before start)."""

    def __init__(self, api: ApiState, durable: str = DURABLE) -> None:
        self._api = api
        self._durable = durable
        s = api.settings
        self._smtp = SmtpConfig.parse(s.ratchet_smtp_url) if s.ratchet_smtp_url else None
        self._consumer: BatchConsumer | None = None
        self._http: httpx.AsyncClient | None = None
        self._loops: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._secrets: TTLCache[str, str] = TTLCache(maxsize=10_000, ttl=30.0)

    async def start(self) -> None:
        s = self._api.settings
        self._http = httpx.AsyncClient(timeout=s.delivery_timeout_s, follow_redirects=False)
        self._consumer = BatchConsumer(
            self._api.js, stream=Stream.TASK, durable=self._durable,
            filter_subject=TASK_CHANGES_ALL, handler=self._on_changes, batch_size=256,
            # A batch fails here only when PostgreSQL does: keep retrying for about a day
            # (the deliveries' own promise) before the batch is dead-lettered.
            max_deliver=FACT_MAX_DELIVER, backoff_s=FACT_BACKOFF_S, deliver_new=True,
        )
        await self._consumer.start()
        self._loops = asyncio.create_task(self._run_loops(), name="notifier")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._loops is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loops), 15)
            except TimeoutError:
                self._loops.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loops
            self._loops = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # facts ------------------------------------------------------------------------------
    async def _on_changes(self, msgs: list[Msg]) -> Rejected | None:
        rejected: Rejected = []
        ended: dict[str, dict[str, tuple[str, str]]] = {}
        for msg in msgs:
            try:
                changes = RUN_CHANGES_DECODER.decode(msg.data)
            except Exception as exc:
                rejected.append((msg, f"undecodable state changes: {exc}"))
                continue
            for change in changes.runs:
                if change.status in RUN_TERMINAL:
                    ended.setdefault(change.tenant, {})[change.run_id] = (
                        change.workflow, change.status)
        queued = 0
        for tenant, runs in ended.items():
            queued += await callbacks.queue_run_callbacks(self._api, tenant, list(runs))
            failed = [(run_id, wf) for run_id, (wf, status) in runs.items() if status == "FAILED"]
            if failed:
                await alerts.count_failed_runs(self._api, tenant, failed)
        if queued:
            self._wake.set()
        return rejected

    # loops ------------------------------------------------------------------------------
    async def _run_loops(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._deliver_loop())
            tg.create_task(self._sweep_loop())

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _deliver_loop(self) -> None:
        s = self._api.settings
        idle_s = min(1.0, s.delivery_backoff_base_s)
        lease_s = s.delivery_timeout_s * 3 + 30
        while not self._stopping.is_set():
            try:
                due = await self._api.deliveries.claim(s.delivery_concurrency, lease_s)
                if due:
                    await asyncio.gather(*(self._deliver(row) for row in due))
                    continue
            except Exception:
                log.exception("notifier: delivering failed; retrying")
            await self._pause(idle_s)

    async def _secret(self, tenant: str) -> str:
        secret = self._secrets.get(tenant)
        if secret is None:
            secret = str((await self._api.webhooks.signing_secret(tenant))["secret"])
            self._secrets[tenant] = secret
        return secret

    async def _deliver(self, row: Any) -> None:
        s = self._api.settings
        assert self._http is not None
        tenant, delivery_id = row["tenant_id"], row["id"]
        body = bytes(row["body"])
        status: int | None = None
        error: str | None = None
        retry = True
        try:
            if row["channel"] == "webhook":
                event = callbacks.EVENT if row["kind"] == "callback" else "alert"
                status = await post_signed(self._http, row["target"], body,
                                           await self._secret(tenant), delivery_id, event)
            elif row["channel"] == "slack":
                status = await post(self._http, row["target"], body,
                                    {"content-type": "application/json"})
            else:
                await send_email(self._smtp, row["target"].split(","), body,
                                 s.delivery_timeout_s)
        except SendFailed as exc:
            status, error, retry = exc.status, str(exc), exc.retry
        except Exception as exc:  # a bug must not stop the loop: record it, retry later
            error = f"{type(exc).__name__}: {exc}"
        metrics.OUTBOUND_DELIVERIES.labels(
            row["channel"], "delivered" if error is None else "failed").inc()
        wait = backoff_s(row["attempts"], s.delivery_backoff_base_s, s.delivery_backoff_max_s)
        age = time.time() - row["created_at"].timestamp()
        give_up = error is not None and (not retry or age + wait > s.delivery_retry_for_s)
        if error is not None:
            log.info("delivery %s to %s failed (attempt %d): %s", delivery_id, row["target"],
                     row["attempts"] + 1, error)
        await self._api.deliveries.settle(
            tenant, delivery_id, delivered=error is None, give_up=give_up, last_status=status,
            last_error=error, retry_in_s=wait,
        )

    async def _sweep_loop(self) -> None:
        s = self._api.settings
        next_check = 0.0
        next_prune = time.monotonic() + 60.0
        while not self._stopping.is_set():
            try:
                if await alerts.flush_groups(self._api):
                    self._wake.set()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + s.alert_check_interval_s
                    await self._periodic_checks()
                if now >= next_prune:
                    next_prune = now + PRUNE_EVERY_S
                    await self._api.alerts.prune(KEEP_FINISHED_S)
                    await self._api.deliveries.prune(KEEP_FINISHED_S, KEEP_CALLBACK_URLS_S)
            except Exception:
                log.exception("notifier: sweeping alerts failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), min(0.5, s.alert_window_s / 4))

    async def _periodic_checks(self) -> None:
        s = self._api.settings
        api = self._api
        for tenant in _tenants(await api.alerts.tenants_watching("worker.pool_empty")):
            stalled = await api.alerts.stalled_actions(tenant, s.alert_pool_empty_s)
            if not stalled:
                continue
            served = {a for w in await api.worker_registry.list_workers(tenant)
                      for a in w.info.actions}
            for row in stalled:
                if row["action"] not in served:
                    await alerts.count_event(
                        api, tenant, "worker.pool_empty", row["workflow"],
                        f"task action {row['action']} has waited over "
                        f"{s.alert_pool_empty_s:.0f} s with no worker serving it",
                        workflow=row["workflow"],
                    )
        for tenant in _tenants(await api.alerts.tenants_watching("token.expiring")):
            for token in await api.alerts.expiring_tokens(tenant, s.alert_token_expiring_s):
                await alerts.count_event(
                    api, tenant, "token.expiring", f"{token['name']} ({token['id']})",
                    f"token {token['name']} expires at {token['expires_at'].isoformat()}",
                    once=f"token:{token['id']}",
                )


def _tenants(rules: list[Any]) -> list[str]:
    return sorted({r["tenant_id"] for r in rules})
