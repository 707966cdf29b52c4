"""Dashboard login: the API token in an HttpOnly cookie, and a CSRF token derived from it.

The cookie holds the token itself (SameSite=Strict, HttpOnly, path /ui), so every page
resolves its tenant exactly as the REST API does for a bearer token. State-changing forms
carry a CSRF token: an HMAC of the session token, which a page of another site can neither
read nor compute.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from libs.common.tenants import Principal
from services.api.auth import Api

COOKIE = "ratchet_session"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
COOKIE_MAX_AGE_S = 7 * 24 * 3600


class LoginRequired(NotAuthorizedException):
    """No valid session: the page redirects to the login form."""


@dataclass(frozen=True)
class UiSession:
    tenant: str
    csrf: str
    # The token's identity: the dashboard's changes are audited under it, as the API's are.
    principal: Principal


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"ratchet-ui-csrf", hashlib.sha256).hexdigest()[:32]


async def provide_session(request: Request, api: Api) -> UiSession:  # type: ignore[type-arg]
    token = request.cookies.get(COOKIE, "")
    principal = await api.tokens.principal(token) if token else None
    if principal is None:
        raise LoginRequired("log in with an API token")
    return UiSession(tenant=principal.tenant, csrf=csrf_for(token), principal=principal)


async def check_csrf(request: Request, session: UiSession) -> dict[str, list[str]]:  # type: ignore[type-arg]
    """The submitted form (field -> values) once its CSRF token is the session's; 403 if not."""
    form = await request.form()
    fields = {key: [str(v) for v in form.getall(key)] for key in form}
    sent = request.headers.get(CSRF_HEADER) or (fields.get(CSRF_FIELD) or [""])[0]
    if not hmac.compare_digest(sent, session.csrf):
        raise PermissionDeniedException("missing or stale CSRF token: reload the page")
    return fields
