"""The API service: Litestar served by uvicorn inside our own lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from nats.aio.client import Client as NATS

from libs.common import db, jetstream, tokens
from libs.common.olap import OlapClient
from libs.common.service import Service
from libs.common.settings import Settings
from services.api.app import create_app
from services.api.notify import Notifier
from services.api.payload_gc import PayloadCollector
from services.api.state import ApiState

log = logging.getLogger(__name__)


class ApiService(Service):
    name = "api"

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.state: ApiState | None = None
        self._nc: NATS | None = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self.payload_gc: PayloadCollector | None = None
        self.notifier: Notifier | None = None
        self.port = settings.api_port

    async def _start(self) -> None:
        s = self.settings
        self._nc = await jetstream.connect(s, "api")
        js = self._nc.jetstream()
        await jetstream.provision(js, s)
        await db.migrate(s.database_url)
        pool = await db.create_pool(s.database_url, max_size=10)
        # See AuditRepo.record: these commits do not wait for their WAL flush.
        audit_pool = await db.create_pool(
            s.database_url, max_size=4, server_settings={"synchronous_commit": "off"},
        )
        self.state = ApiState(
            settings=s, pool=pool, nc=self._nc, js=js, tokens=tokens.TokenCache(pool),
            olap=OlapClient(s, self._nc), audit_pool=audit_pool,
        )
        await self.state.start()
        assert self.state.payloads is not None
        self.payload_gc = PayloadCollector(s, pool, self.state.payloads)
        self.payload_gc.start()
        # Run callbacks and alerts (services/api/notify): HTTP and SMTP off the request path.
        self.notifier = Notifier(self.state)
        await self.notifier.start()
        app = create_app(self.state)
        config = uvicorn.Config(
            app, host=s.api_host, port=s.api_port, log_level="warning", lifespan="off",
            access_log=False, http="httptools", loop="none",
            # HTTPS when both are set (Settings refuses one without the other).
            ssl_certfile=s.api_tls_cert or None, ssl_keyfile=s.api_tls_key or None,
        )
        self._server = uvicorn.Server(config)
        self._serve_task = asyncio.create_task(self._server.serve(), name="api-http")
        while not self._server.started:
            if self._serve_task.done():
                self._serve_task.result()
                raise RuntimeError("API server exited during startup")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if s.api_tls_cert else "http"
        self.state.public_url = s.ratchet_public_url or f"{scheme}://{s.api_host}:{self.port}"
        log.info("api listening on %s://%s:%d", "https" if s.api_tls_cert else "http",
                 s.api_host, self.port)

    async def _stop(self) -> None:
        if self.payload_gc is not None:
            await self.payload_gc.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        if self.state is not None:
            self.state.stopping.set()
        if self._server is not None:
            self._server.should_exit = True
        if self._serve_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serve_task, 10)
        if self.state is not None:
            await self.state.stop()
            if self.state.olap is not None:
                await self.state.olap.close()
            await self.state.pool.close()
            if self.state.audit_pool is not None:
                await self.state.audit_pool.close()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.drain()
