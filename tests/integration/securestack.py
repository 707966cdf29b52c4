"""A second in-process stack whose every service connects to NATS with its own credentials
(and, when given, serves and speaks TLS). Used by test_nats_auth.py and test_tls.py."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.common import db, tokens
from libs.common.natsauth_setup import AuthLayout
from libs.common.settings import Settings, load_settings
from services.api.service import ApiService
from services.dispatcher.service import DispatcherService
from services.matcher.service import MatcherService
from services.scheduler.service import SchedulerService


@dataclass
class SecureStack:
    settings: dict[str, Settings]
    api: ApiService
    dispatcher: DispatcherService
    services: list[Any] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        scheme = "https" if self.api.settings.api_tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.api.port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.dispatcher.port}"

    async def new_tenant(self) -> tuple[str, str]:
        """A fresh tenant and its API token."""
        tenant = "t" + uuid.uuid4().hex[:12]
        pool = await db.create_pool(self.api.settings.database_url, max_size=1)
        try:
            token = await tokens.ensure_tenant(pool, tenant)
        finally:
            await pool.close()
        return tenant, token


@contextlib.asynccontextmanager
async def secure_stack(
    nats_url: str, layout: AuthLayout, database_url: str, data_dir: Path, **tls: str
) -> AsyncIterator[SecureStack]:
    """Scheduler, dispatcher, matcher and API, each with its role's NATS credentials.

    `tls`: extra Settings fields (api_tls_cert, grpc_tls_cert, nats_tls_ca, ...).
    """
    common: dict[str, Any] = dict(
        nats_url=nats_url, database_url=database_url, api_port=0, grpc_port=0,
        dispatcher_id=f"sec-{uuid.uuid4().hex[:8]}", data_dir=str(data_dir),
        worker_heartbeat_timeout_s=4.0, **tls,
    )
    settings = {
        role: load_settings(**common, nats_creds=str(layout.creds(role)))
        for role in ("scheduler", "dispatcher", "matcher", "api")
    }
    settings["api"] = load_settings(
        **common, nats_creds=str(layout.creds("api")), nats_account=layout.account,
        nats_signing_seed_file=str(layout.signing_seed_file),
    )
    scheduler = SchedulerService(settings["scheduler"])
    dispatcher = DispatcherService(settings["dispatcher"])
    matcher = MatcherService(settings["matcher"], durable=f"matcher-{uuid.uuid4().hex[:6]}")
    api = ApiService(settings["api"])
    started: list[Any] = []
    try:
        for svc in (scheduler, dispatcher, matcher, api):
            await svc.start()
            started.append(svc)
        yield SecureStack(settings, api, dispatcher, started)
    finally:
        for svc in reversed(started):
            await svc.stop()


def permission_violations(records: list[logging.LogRecord]) -> list[str]:
    """What the services' NATS clients reported as refused (nats-py logs async server errors):
    a role missing a subject its service uses shows up here, not as a failed call."""
    return [
        str(r.exc_info[1]) for r in records
        if r.exc_info and "permissions violation" in str(r.exc_info[1]).lower()
    ]
