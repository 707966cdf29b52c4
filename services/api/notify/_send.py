"""Sending one outgoing delivery: an HTTP POST (signed for webhooks) or an email over SMTP,
and how long to wait before trying a failed one again."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
import httpx
import msgspec

from services.api.actions.hook_auth import sign
from services.api.actions.webhooks import SIGNATURE_HEADER


class SendFailed(Exception):
    """The delivery did not go through; `status` is the HTTP status if one came back, and
    `retry` says whether trying again could help."""

    def __init__(self, message: str, status: int | None = None, retry: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry


@dataclass(frozen=True)
class SmtpConfig:
    """RATCHET_SMTP_URL: smtp://[user:password@]host[:port][?from=addr] (smtps:// for TLS)."""

    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    sender: str

    @classmethod
    def parse(cls, url: str) -> SmtpConfig:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("RATCHET_SMTP_URL must look like smtp://user:pass@host:port")
        sender = parse_qs(parts.query).get("from", ["ratchet@localhost"])[0]
        return cls(
            host=parts.hostname, port=parts.port or (465 if parts.scheme == "smtps" else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=parts.scheme == "smtps", sender=sender,
        )


# Answers that will not change by asking again: anything 4xx but a timeout or a rate limit.
def _retryable(status: int) -> bool:
    return status >= 500 or status in (408, 409, 425, 429)


async def post(http: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> int:
    try:
        resp = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
    if 200 <= resp.status_code < 300:
        return resp.status_code
    raise SendFailed(f"answered {resp.status_code}: {resp.text[:200]}", resp.status_code,
                     _retryable(resp.status_code))


async def post_signed(http: httpx.AsyncClient, url: str, body: bytes, secret: str,
                      delivery_id: str, event: str) -> int:
    headers = {
        "content-type": "application/json", "user-agent": "Ratchet-Webhooks/1",
        SIGNATURE_HEADER: sign(secret, int(time.time()), body),
        "Ratchet-Delivery": delivery_id, "Ratchet-Event": event,
    }
    return await post(http, url, body, headers)


async def send_email(smtp: SmtpConfig | None, recipients: list[str], body: bytes,
                     timeout_s: float) -> None:
    if smtp is None:
        raise SendFailed("RATCHET_SMTP_URL is not set", retry=False)
    content = msgspec.json.decode(body)
    message = EmailMessage()
    message["From"] = smtp.sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = str(content.get("subject", "Ratchet alert"))
    message.set_content(str(content.get("text", "")))
    try:
        await aiosmtplib.send(
            message, hostname=smtp.host, port=smtp.port, username=smtp.username,
            password=smtp.password, use_tls=smtp.use_tls, timeout=timeout_s,
        )
    except aiosmtplib.SMTPException as exc:
        raise SendFailed(f"SMTP: {exc}") from exc
    except OSError as exc:
        raise SendFailed(f"SMTP connection: {exc}") from exc


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """The wait after failed attempt number `attempt` (0 for the first): base x 2^attempt,
    capped, with jitter (between half and all of it) so retries of many do not align."""
    step: float = min(max_s, base_s * float(2 ** min(attempt, 30)))
    return step * random.uniform(0.5, 1.0)
