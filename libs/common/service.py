"""The service lifecycle every process shares: start, serve health/metrics, stop in order."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from types import TracebackType
from typing import Self

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from libs.common import logs, telemetry
from libs.common.settings import Settings, load_settings

log = logging.getLogger(__name__)


class Service(abc.ABC):
    """Base for every service: `start()`, idempotent `stop()`, `async with` support."""

    name: str = "service"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = False
        self._started = False
        self._stopped = False

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._start()
        self.ready = True

    async def stop(self) -> None:
        if self._stopped or not self._started:
            self._stopped = True
            return
        self._stopped = True
        self.ready = False
        await self._stop()

    @abc.abstractmethod
    async def _start(self) -> None: ...

    @abc.abstractmethod
    async def _stop(self) -> None: ...

    async def refresh_metrics(self) -> None:
        """Bring gauges that describe current state up to date; called when /metrics is read."""
        return None  # services without state gauges have nothing to refresh

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class HealthServer:
    """Tiny HTTP endpoint: GET /healthz (200 when ready) and GET /metrics (Prometheus)."""

    def __init__(self, service: Service, host: str, port: int) -> None:
        self._service = service
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "/"
            if path.startswith("/metrics"):
                try:
                    await asyncio.wait_for(self._service.refresh_metrics(), 5)
                except Exception as exc:  # stale gauges are better than a failed scrape
                    log.warning("refreshing metrics failed: %r", exc)
                body, ctype, status = generate_latest(), CONTENT_TYPE_LATEST, "200 OK"
            elif path.startswith("/healthz"):
                ok = self._service.ready
                body = b"ok\n" if ok else b"starting\n"
                ctype, status = "text/plain", "200 OK" if ok else "503 Service Unavailable"
            else:
                body, ctype, status = b"not found\n", "text/plain", "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run_service(factory: Callable[[Settings], Service]) -> None:
    """Entry point body for `python -m services.<name>`: run until SIGTERM/SIGINT."""
    settings = load_settings()
    service = factory(settings)
    logs.configure(service.name, settings.log_level)
    telemetry.configure(service.name, settings.otlp_endpoint)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable
        pass
    try:
        asyncio.run(_serve(service, settings))
    finally:
        telemetry.shutdown()  # flush spans still batched for export


async def _serve(service: Service, settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = HealthServer(service, "127.0.0.1", settings.metrics_port)
    await health.start()
    try:
        await service.start()
        log.info("%s started", service.name, extra={"metrics_port": health.port})
        await stop.wait()
        log.info("%s stopping", service.name)
    finally:
        await service.stop()
        await health.stop()
        log.info("%s stopped", service.name)
