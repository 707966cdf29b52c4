"""REST resources the `ratchet` command line needs beyond `ratchet.resources`: triggering a
workflow by name, listing workflows, API tokens, tenant limits, the audit log, and the
operator endpoints (/admin).

Each takes anything with a `request(method, path, json=, params=)` method: a `Ratchet`
client or its transport. The operator resource wants a client built with the operator token.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from ratchet import _codec

# Names of the limits an operator sets (`GET /limits` lists them with their usage).
LIMIT_NAMES = (
    "unfinished_runs", "triggers_per_s", "events_per_s", "payload_bytes", "workers", "slots",
)
SCOPES = ("admin", "write", "read", "worker")


class Requester(Protocol):
    def request(self, method: str, path: str, json: Any = None, params: Any = None) -> Any: ...


def _seg(value: str) -> str:
    """One path segment: a name or id typed by a user must not be able to change the route."""
    return quote(value, safe="")


class _Resource:
    def __init__(self, requester: Requester) -> None:
        self._c = requester


class WorkflowCatalog(_Resource):
    """Workflows registered by this tenant's workers, and runs of them by name."""

    def list(self) -> list[dict[str, Any]]:
        """The current version of every workflow: dicts of name, version_id, spec, updated_at."""
        out: list[dict[str, Any]] = self._c.request("GET", "/workflows")
        return out

    def trigger(self, workflow: str, input: Any = None, *, metadata: dict[str, str] | None = None,
                priority: int | None = None, version_id: str | None = None) -> dict[str, Any]:
        """Start a run of `workflow` without its definition in hand; {run_id, workflow,
        version_id}. The workflow must have been registered (by a worker or `Ratchet.register`)."""
        body: dict[str, Any] = {"input": _codec.to_builtins(input) if input is not None else {}}
        if metadata:
            body["metadata"] = metadata
        if priority is not None:
            body["priority"] = priority
        if version_id is not None:
            body["version_id"] = version_id
        out: dict[str, Any] = self._c.request("POST", f"/workflows/{_seg(workflow)}/run", json=body)
        return out


class Tokens(_Resource):
    """This tenant's API tokens (`admin` scope)."""

    def create(self, name: str, scopes: list[str], *,
               expires_in_s: int | None = None) -> dict[str, Any]:
        """A new token: {id, name, scopes, expires_at, token}; `token` is the secret, shown once."""
        body: dict[str, Any] = {"name": name, "scopes": scopes}
        if expires_in_s is not None:
            body["expires_in_s"] = expires_in_s
        out: dict[str, Any] = self._c.request("POST", "/tokens", json=body)
        return out

    def list(self, *, include_revoked: bool = False) -> list[dict[str, Any]]:
        params = {"include_revoked": "true"} if include_revoked else None
        out: list[dict[str, Any]] = self._c.request("GET", "/tokens", params=params)
        return out

    def get(self, token_id: str) -> dict[str, Any]:
        """One token: {id, name, scopes, created_at, expires_at, revoked_at} (no secret)."""
        out: dict[str, Any] = self._c.request("GET", f"/tokens/{_seg(token_id)}")
        return out

    def revoke(self, token_id: str) -> None:
        """Revoke a token; every API and dispatcher process refuses it within seconds."""
        self._c.request("DELETE", f"/tokens/{_seg(token_id)}")


class Limits(_Resource):
    def get(self) -> dict[str, Any]:
        """{"limits": [{name, limit, usage}]}: null limit = unlimited, null usage = not measured."""
        out: dict[str, Any] = self._c.request("GET", "/limits")
        return out


class Audit(_Resource):
    def list(self, *, since: str | None = None, action: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries, newest first: who (token id and name) did what, when, to what."""
        params: dict[str, Any] = {"limit": limit}
        if since:
            params["since"] = since
        if action:
            params["action"] = action
        out: list[dict[str, Any]] = self._c.request("GET", "/audit", params=params)
        return out


class Admin(_Resource):
    """Operator endpoints; the requester must carry the operator token."""

    def create_tenant(self, tenant_id: str) -> dict[str, Any]:
        """Create a tenant; {id, token} with its first API token's secret (shown once)."""
        out: dict[str, Any] = self._c.request("POST", "/admin/tenants", json={"id": tenant_id})
        return out

    def list_tenants(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._c.request("GET", "/admin/tenants")
        return out

    def migrate(self) -> list[str]:
        """Apply pending SQL migrations; the names of those that ran."""
        out: dict[str, list[str]] = self._c.request("POST", "/admin/migrate")
        return out["applied"]

    def set_limits(self, tenant_id: str, changes: dict[str, float | None]) -> dict[str, Any]:
        """Set some of a tenant's limits (None = unlimited); the tenant's limits afterwards."""
        unknown = sorted(set(changes) - set(LIMIT_NAMES))
        if unknown:
            raise ValueError(f"unknown limits {unknown}; known: {', '.join(LIMIT_NAMES)}")
        out: dict[str, Any] = self._c.request(
            "PUT", f"/admin/tenants/{_seg(tenant_id)}/limits", json=changes
        )
        return out
