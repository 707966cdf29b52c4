"""Alerts: rules (create, list, delete, send a test), counting what a rule alerts on into its
open group, and the messages a closed group becomes.

An occurrence (a failed run, a workflow with no worker, a token about to expire, a limit
reached) is counted in the rule's open group for that event and subject; the group closes
`window_s` after it opened and is then sent once per destination (Slack, email, webhook) with
the count and a link to the last run in the dashboard. So a burst of failures is one message
per rule per window, never one per run.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import asyncpg
import msgspec
from cachetools import TTLCache

from libs.common.cel import CelError, Program, compile_filter, to_cel
from libs.common.limits import LimitExceeded
from libs.common.tokens import Principal
from services.api.actions.audit import audit_entry
from services.api.actions.runs import load_run
from services.api.repos.deliveries import NewDelivery, enqueue
from services.api.repos.errors import Invalid, NotFound
from services.api.schemas.alerts import AlertIn, AlertTestSent, AlertView
from services.api.state import ApiState

log = logging.getLogger(__name__)
EVENTS = ("run.failed", "worker.pool_empty", "token.expiring", "limit.reached")
RULE_VARIABLES = frozenset({"run"})
_JSON = msgspec.json.Encoder()
RULES_TTL_S = 2.0  # how long a replica trusts its cached rules of a tenant
_MAX_CACHED_TENANTS = 10_000


def rule_view(row: Any) -> AlertView:
    return AlertView(
        id=row["id"], on=list(row["events"]), workflow=row["workflow"], filter=row["filter"],
        slack_webhook_url=row["slack_webhook_url"], email=list(row["email"]),
        webhook_url=row["webhook_url"], window_s=row["window_s"],
        created_at=row["created_at"].isoformat(),
    )


def _compile(expression: str) -> Program:
    try:
        return compile_filter(expression, RULE_VARIABLES)
    except CelError as exc:
        raise Invalid(f"invalid filter: {exc}",
                      extra={"field": "filter", "line": exc.line, "column": exc.column}) from exc


async def create_rule(api: ApiState, caller: Principal, data: AlertIn) -> AlertView:
    if not (data.slack_webhook_url or data.email or data.webhook_url):
        raise Invalid("an alert needs somewhere to go: slack_webhook_url, email or webhook_url")
    if data.filter is not None:
        _compile(data.filter)
    if data.email and not api.settings.ratchet_smtp_url:
        raise Invalid("email alerts need the server's RATCHET_SMTP_URL, which is not set")
    rule_id = "alr_" + uuid.uuid4().hex
    window = data.window_s if data.window_s is not None else api.settings.alert_window_s
    entry = audit_entry(caller, "alert.create", rule_id, {"on": list(data.on)})
    row = await api.alerts.create(
        caller.tenant, rule_id, sorted(set(data.on)), data.workflow, data.filter,
        data.slack_webhook_url, list(data.email), data.webhook_url, window, entry,
    )
    RULES.forget(caller.tenant)
    return rule_view(row)


async def list_rules(api: ApiState, tenant: str) -> list[AlertView]:
    return [rule_view(r) for r in await api.alerts.list_rules(tenant)]


async def get_rule(api: ApiState, tenant: str, rule_id: str) -> AlertView:
    row = await api.alerts.get(tenant, rule_id)
    if row is None:
        raise NotFound(f"alert {rule_id!r} not found")
    return rule_view(row)


async def delete_rule(api: ApiState, caller: Principal, rule_id: str) -> None:
    if not await api.alerts.delete(caller.tenant, rule_id,
                                   audit_entry(caller, "alert.delete", rule_id)):
        raise NotFound(f"alert {rule_id!r} not found")
    RULES.forget(caller.tenant)


class _RuleCache:
    """Each tenant's rules, kept RULES_TTL_S (a change made through another replica shows
    within that); bounded by tenant count."""

    def __init__(self) -> None:
        self._rules: dict[str, tuple[float, list[asyncpg.Record]]] = {}

    def forget(self, tenant: str) -> None:
        self._rules.pop(tenant, None)

    async def get(self, api: ApiState, tenant: str) -> list[asyncpg.Record]:
        hit = self._rules.get(tenant)
        now = time.monotonic()
        if hit is not None and now - hit[0] < RULES_TTL_S:
            return hit[1]
        rows = await api.alerts.list_rules(tenant)
        if len(self._rules) >= _MAX_CACHED_TENANTS:
            self._rules.clear()
        self._rules[tenant] = (now, rows)
        return rows


RULES = _RuleCache()


def _run_variables(run: Any) -> dict[str, Any]:
    return {"run": to_cel({
        "id": run.id, "workflow": run.workflow, "status": run.status, "input": run.input,
        "metadata": run.metadata, "errors": run.errors,
    })}


async def count_failed_runs(api: ApiState, tenant: str, runs: list[tuple[str, str]]) -> int:
    """Count failed runs `(run_id, workflow)` into the groups of the rules they match;
    answers how many counts were made. A run counted before (a redelivery) is not again."""
    rules = [r for r in await RULES.get(api, tenant) if "run.failed" in r["events"]]
    if not rules:
        return 0
    counted = 0
    for run_id, workflow in runs:
        matching = [r for r in rules if r["workflow"] in (None, workflow)]
        if not matching:
            continue
        view = await load_run(api, tenant, run_id)
        detail = f"run {run_id} of {workflow} failed"
        if view is not None and view.errors:
            task, error = next(iter(view.errors.items()))
            detail += f": {task}: {error.get('type', 'Error')}: {error.get('message', '')}"[:500]
        for rule in matching:
            if rule["filter"]:
                if view is None:
                    continue
                matched, _ = _compile(rule["filter"]).evaluate(_run_variables(view))
                if not matched:
                    continue
            if not await api.alerts.first_time(tenant, rule["id"], f"run:{run_id}"):
                continue
            await api.alerts.count(tenant, rule["id"], "run.failed", workflow, rule["window_s"],
                                   run_id, detail)
            counted += 1
    return counted


async def count_event(api: ApiState, tenant: str, event: str, subject: str, detail: str,
                      *, workflow: str | None = None, once: str | None = None) -> int:
    """Count an occurrence of `event` about `subject` for the tenant's rules watching it
    (those naming a workflow only when it is `workflow`). `once`: a fact that counts only
    the first time a rule sees it."""
    counted = 0
    for rule in await RULES.get(api, tenant):
        if event not in rule["events"]:
            continue
        if rule["workflow"] is not None and rule["workflow"] != workflow:
            continue
        if once is not None and not await api.alerts.first_time(tenant, rule["id"], once):
            continue
        await api.alerts.count(tenant, rule["id"], event, subject, rule["window_s"], None, detail)
        counted += 1
    return counted


# A flood of refused requests counts once per tenant and limit per second, not once each.
_LIMIT_SEEN: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=10_000, ttl=1.0)


async def limit_reached(api: ApiState, tenant: str, exc: LimitExceeded) -> None:
    """Count a refusal by a tenant limit for the rules watching `limit.reached`."""
    key = (tenant, exc.limit.value)
    if key in _LIMIT_SEEN:
        return
    _LIMIT_SEEN[key] = True
    try:
        await count_event(api, tenant, "limit.reached", exc.limit.value, str(exc))
    except Exception:  # the 429 is the answer that matters; an alert is best effort here
        log.exception("counting limit.reached for %s failed", tenant)


# Messages ---------------------------------------------------------------------------------

def dashboard_url(api: ApiState, run_id: str | None) -> str | None:
    if run_id is None:
        return None
    base = api.public_url or api.settings.ratchet_public_url or \
        f"http://{api.settings.api_host}:{api.settings.api_port}"
    return f"{base.rstrip('/')}/ui/runs/{run_id}"


def _summary(group: Any) -> str:
    count, event, subject = group["count"], group["event"], group["subject"]
    times = "once" if count == 1 else f"{count} times"
    return {
        "run.failed": f"{count} run{'s' if count != 1 else ''} of {subject} failed",
        "worker.pool_empty": f"workflow {subject} has queued tasks and no worker ({times})",
        "token.expiring": f"API token {subject} expires soon",
        "limit.reached": f"limit {subject} reached {times}",
    }.get(event, f"{event}: {subject} ({times})")


def group_messages(api: ApiState, group: Any, *, test: bool = False) -> list[NewDelivery]:
    """What one closed group sends: one delivery per destination of its rule."""
    tenant, rule_id = group["tenant_id"], group["rule_id"]
    summary = ("[test] " if test else "") + _summary(group)
    link = dashboard_url(api, group["last_run_id"])
    window = f"{group['opened_at'].isoformat()} to {group['closes_at'].isoformat()}"
    text = f"Ratchet alert ({tenant}): {summary}.\n{group['detail']}\nWindow: {window}"
    if link:
        text += f"\nLast run: {link}"
    payload = {
        "event": group["event"], "tenant": tenant, "rule_id": rule_id,
        "subject": group["subject"], "count": group["count"], "summary": summary,
        "detail": group["detail"], "first_run_id": group["first_run_id"],
        "last_run_id": group["last_run_id"], "run_url": link,
        "window_start": group["opened_at"].isoformat(),
        "window_end": group["closes_at"].isoformat(), "test": test,
    }
    base = f"al:{group['id']}"
    out: list[NewDelivery] = []
    if group["slack_webhook_url"]:
        slack = {"text": text if not link else text.replace(link, f"<{link}|{group['last_run_id']}>")}
        out.append(NewDelivery(tenant, f"{base}:slack", "alert", "slack",
                               group["slack_webhook_url"], group["last_run_id"], rule_id,
                               _JSON.encode(slack)))
    if group["email"]:
        mail = {"subject": f"[Ratchet] {summary}", "text": text}
        out.append(NewDelivery(tenant, f"{base}:email", "alert", "email",
                               ",".join(group["email"]), group["last_run_id"], rule_id,
                               _JSON.encode(mail)))
    if group["webhook_url"]:
        out.append(NewDelivery(tenant, f"{base}:webhook", "alert", "webhook",
                               group["webhook_url"], group["last_run_id"], rule_id,
                               _JSON.encode(payload)))
    return out


async def flush_groups(api: ApiState, limit: int = 100) -> int:
    """Turn the groups whose window has closed into their messages (queued for delivery in
    the same transaction as the group is closed)."""

    async def deliver(conn: asyncpg.Connection, group: asyncpg.Record) -> None:
        await enqueue(conn, group_messages(api, group))

    return await api.alerts.flush_due(limit, deliver)


async def send_test(api: ApiState, caller: Principal, rule_id: str) -> AlertTestSent:
    """Queue a message marked as a test to each destination of the rule, now."""
    row = await api.alerts.get(caller.tenant, rule_id)
    if row is None:
        raise NotFound(f"alert {rule_id!r} not found")
    now = await api.pool.fetchval("SELECT now()")
    group = {
        "tenant_id": caller.tenant, "rule_id": rule_id, "id": "test_" + uuid.uuid4().hex,
        "event": row["events"][0], "subject": row["workflow"] or "(any workflow)", "count": 1,
        "detail": "This is a test message sent from the dashboard or the API.",
        "first_run_id": None, "last_run_id": None, "opened_at": now, "closes_at": now,
        "slack_webhook_url": row["slack_webhook_url"], "email": row["email"],
        "webhook_url": row["webhook_url"],
    }
    items = group_messages(api, group, test=True)
    await enqueue(api.pool, items)
    await api.audit.record(audit_entry(caller, "alert.test", rule_id))
    return AlertTestSent(delivery_ids=[i.id for i in items])
