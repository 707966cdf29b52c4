"""Dashboard login: the API token in an HttpOnly cookie, and a CSRF token derived from it.

The cookie (`auth.TOKEN_COOKIE`, SameSite=Strict, HttpOnly, path /ui) holds the token itself,
and every page resolves it through `auth.authenticate`, the REST API's own path: the same
TokenCache, so a revoked or expired token ends a dashboard session as fast as it fails a REST
call, and the same scopes, so a read-only token sees pages but cannot change anything.
State-changing forms carry a CSRF token: an HMAC of the session token, which a page of another
site can neither read nor compute.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from litestar import Request
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from libs.common.tokens import Principal, Scope
from services.api.auth import TOKEN_COOKIE, Api, authenticate, bearer_token

COOKIE = TOKEN_COOKIE
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
# Where a page goes when its session ends; the login page says why.
ENDED_URL = "/ui/login?ended=1"
NO_READ = ("This token lacks the 'read' scope the dashboard needs (a worker token, say)."
           " Log in with a read, write or admin token.")


class LoginRequired(NotAuthorizedException):
    """No valid session: the page goes to the login form.

    `ended`: the browser still held a token, which was revoked or has expired.
    """

    def __init__(self, detail: str, *, ended: bool = False) -> None:
        super().__init__(detail)
        self.ended = ended


@dataclass(frozen=True)
class UiSession:
    principal: Principal
    csrf: str
    token: str = field(repr=False)  # to re-check the session on long-lived streams

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def can(self, scope: str) -> bool:
        return self.principal.allows(Scope(scope))

    async def alive(self, api: Api) -> bool:
        """Whether the token still works (the TokenCache: revocation, expiry)."""
        return await api.tokens.principal(self.token) is not None


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"ratchet-ui-csrf", hashlib.sha256).hexdigest()[:32]


async def provide_session(request: Request) -> UiSession:  # type: ignore[type-arg]
    token = bearer_token(request)
    if token is None:
        raise LoginRequired("log in with an API token")
    try:
        principal = await authenticate(request)
    except NotAuthorizedException as exc:
        raise LoginRequired(str(exc.detail), ended=True) from exc
    if not principal.allows(Scope.READ):  # e.g. a worker token: GET /runs refuses it too
        raise PermissionDeniedException(NO_READ)
    return UiSession(principal=principal, csrf=csrf_for(token), token=token)


def require_scope(session: UiSession, scope: Scope, doing: str) -> None:
    """Refuse `doing` (e.g. "cancelling a run") when the session's token lacks `scope`."""
    if not session.principal.allows(scope):
        held = ", ".join(sorted(s.value for s in session.principal.scopes))
        raise PermissionDeniedException(
            f"Not allowed: {doing} needs the '{scope.value}' scope, and the token"
            f" '{session.principal.token_name}' has only {held}. Log in with a token that"
            f" has '{scope.value}' (Settings → API tokens)."
        )


async def check_csrf(request: Request, session: UiSession) -> dict[str, list[str]]:  # type: ignore[type-arg]
    """The submitted form (field -> values) once its CSRF token is the session's; 403 if not."""
    form = await request.form()
    fields = {key: [str(v) for v in form.getall(key)] for key in form}
    sent = request.headers.get(CSRF_HEADER) or (fields.get(CSRF_FIELD) or [""])[0]
    if not hmac.compare_digest(sent, session.csrf):
        raise PermissionDeniedException("missing or stale CSRF token: reload the page")
    return fields
