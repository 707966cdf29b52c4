"""The health/metrics endpoint every service serves: /healthz follows readiness, /metrics scrapes."""

from __future__ import annotations

import httpx
from prometheus_client import Counter

from libs.common.service import HealthServer, Service
from libs.common.settings import load_settings

_PROBE = Counter("ratchet_test_health_probe", "touched by the health server test")


class _Probe(Service):
    name = "probe"

    def __init__(self) -> None:
        super().__init__(load_settings())
        self.refreshed = 0

    async def _start(self) -> None:
        return None

    async def _stop(self) -> None:
        return None

    async def refresh_metrics(self) -> None:
        self.refreshed += 1
        _PROBE.inc()


async def test_healthz_follows_readiness_and_metrics_are_exposed() -> None:
    service = _Probe()
    health = HealthServer(service, "127.0.0.1", 0)
    await health.start()
    try:
        assert health.port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}") as http:
            before = await http.get("/healthz")
            assert before.status_code == 503

            await service.start()
            ready = await http.get("/healthz")
            assert (ready.status_code, ready.text) == (200, "ok\n")

            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "ratchet_test_health_probe_total 1.0" in metrics.text
            assert service.refreshed == 1

            assert (await http.get("/nope")).status_code == 404

            await service.stop()
            assert (await http.get("/healthz")).status_code == 503
    finally:
        await health.stop()
        await health.stop()  # idempotent
    async with httpx.AsyncClient() as http:
        try:
            await http.get(f"http://127.0.0.1:{health.port}/healthz")
        except httpx.ConnectError:
            pass
        else:
            raise AssertionError("the health server still answers after stop()")
