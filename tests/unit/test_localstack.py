"""The private NATS / PostgreSQL helpers start, answer, can be adopted, and stop."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import asyncpg
import nats

from libs.common import localstack


def test_free_port_is_bindable() -> None:
    port = localstack.free_port()
    assert 0 < port < 65536
    assert localstack.port_is_free(port)


def test_nats_server_start_adopt_stop(tmp_path: Path) -> None:
    server = localstack.NatsServer(tmp_path / "store", pid_file=tmp_path / "nats.pid")
    url = server.start()
    try:
        assert url == f"nats://127.0.0.1:{server.port}"
        assert server.pid is not None and localstack.pid_alive(server.pid)

        async def roundtrip() -> int:
            nc = await nats.connect(url)
            try:
                js = nc.jetstream()
                await js.add_stream(name="LOCALSTACK", subjects=["localstack.>"])
                ack = await js.publish("localstack.ping", b"x")
                return ack.seq
            finally:
                await nc.close()

        assert localstack.run_blocking(roundtrip) == 1

        # A second handle over the same pid file adopts the running server (same port).
        again = localstack.NatsServer(tmp_path / "store", pid_file=tmp_path / "nats.pid")
        assert again.start() == url
        assert again.adopted and again.pid == server.pid
    finally:
        server.stop()
    localstack.wait_until(lambda: not localstack.port_open(server.port), 10, "NATS port to close")
    assert not (tmp_path / "nats.pid").exists()


def test_postgres_cluster_start_adopt_stop() -> None:
    base = Path(tempfile.mkdtemp(prefix="ratchet-pg-test-"))
    base.chmod(0o755)  # as root the server runs as `postgres`, which must reach the data dir
    cluster = localstack.PostgresCluster(base / "data", pid_file=base / "postgres.pid")
    try:
        dsn = cluster.start()
        assert dsn == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
        assert (base / "postgres.pid").exists()

        async def select_one() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval("SELECT 1"))
            finally:
                await conn.close()

        assert localstack.run_blocking(select_one) == 1

        again = localstack.PostgresCluster(base / "data")
        assert again.start() == dsn
        assert again.adopted and again.pid == cluster.pid

        cluster.stop()
        assert not cluster.is_running()
        assert not cluster.ready()
        assert not (base / "postgres.pid").exists()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
