"""A private `nats-server -js` for `make up` and the test fixtures: one server, or one node of a
cluster (`make up` with NATS_NODES=3 runs three of these with routes to each other)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tools.devstack.binaries import ensure_binaries
from tools.devstack.procs import (
    DevStackError,
    free_port,
    pid_alive,
    pid_cmdline,
    port_is_free,
    port_open,
    read_pid_file,
    run_blocking,
    tail,
    terminate_pid,
    wait_until,
    write_pid_file,
)

SYNC_ALWAYS = "always"
SYNC_DEFAULT = "default"
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")
CLUSTER_NAME = "ratchet"


def sync_interval(policy: str) -> str | None:
    """The `jetstream { sync_interval }` value for a NATS_SYNC policy; None keeps the server's.

    `always` fsyncs every write before it is acknowledged; `default` (or empty) leaves the
    server's own policy (an fsync every 2 minutes); a duration (`10s`, `500ms`) fsyncs that often.
    """
    value = policy.strip().lower()
    if value in ("", SYNC_DEFAULT):
        return None
    if value == SYNC_ALWAYS or _DURATION.match(value):
        return value
    raise DevStackError(
        f"NATS_SYNC={policy!r}: expected {SYNC_ALWAYS!r}, {SYNC_DEFAULT!r} or a duration like 10s"
    )


async def _jetstream_ready(url: str, options: dict[str, Any]) -> bool:
    import nats  # lazy: `stack.py down` must run without the venv

    async def quiet(_: Exception) -> None:
        return None

    try:
        nc = await nats.connect(
            url,
            connect_timeout=1,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=quiet,
            **options,
        )
    except Exception:
        return False
    try:
        await nc.jsm().account_info()
        return True
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


class NatsServer:
    """A private `nats-server -js` bound to 127.0.0.1, with its file store in `store_dir`.

    `auth_conf`: a config fragment turning auth on (libs.common.natsauth_setup's auth.conf);
    `tls_cert`/`tls_key`: serve TLS only (`tls_ca` also makes the server verify client
    certificates); `probe`: nats.connect keyword arguments (credentials, ssl context) the
    readiness check needs once auth or TLS is on.

    `sync`: the JetStream `sync_interval` (see `sync_interval`; None = the server's default).
    `memory_limit`: the Go runtime's soft memory limit (GOMEMLIMIT, e.g. `384MiB`): past it the
    server collects garbage and returns freed memory to the system sooner, so its RSS stays
    near its live data instead of twice that. `max_memory_store` / `max_file_store`: JetStream's
    caps on memory-backed and file-backed stream data (`jetstream { ... }`, e.g. `64MB`).
    `monitor_port`: serve the HTTP monitoring endpoints (/varz, /healthz) there.
    A cluster node: `server_name`, its own `cluster_port` and `routes` (the cluster ports of
    every node, its own included; nats-server skips that one). A node cannot answer JetStream
    requests until a majority of the cluster is up, so start every node with `launch()`, then
    `wait_ready()` on each.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        port: int = 0,
        *,
        pid_file: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        auth_conf: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        probe: dict[str, Any] | None = None,
        sync: str | None = None,
        memory_limit: str | None = None,
        max_memory_store: str | None = None,
        max_file_store: str | None = None,
        monitor_port: int = 0,
        server_name: str | None = None,
        cluster_port: int = 0,
        routes: Sequence[int] = (),
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.port = port
        self.pid_file = Path(pid_file) if pid_file else self.store_dir / "nats-server.pid"
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.auth_conf = Path(auth_conf).absolute() if auth_conf else None
        if bool(tls_cert) != bool(tls_key):
            raise DevStackError("nats-server TLS needs both a certificate and a key")
        self.tls = (
            (Path(tls_cert).absolute(), Path(tls_key).absolute()) if tls_cert and tls_key
            else None
        )
        self.tls_ca = Path(tls_ca).absolute() if tls_ca else None
        self.probe = probe or {}
        self.sync = sync
        self.memory_limit = memory_limit
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.monitor_port = monitor_port
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = tuple(routes)
        if bool(cluster_port) != bool(server_name):
            raise DevStackError("a nats-server cluster node needs both a server name and a port")
        self.pid: int | None = None
        self.adopted = False
        self.binary: str | None = None  # None when adopted
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def running_pid(self) -> int | None:
        """Pid of a live nats-server recorded in the pid file, for this store dir."""
        pid = read_pid_file(self.pid_file)
        if pid is None or not pid_alive(pid):
            return None
        argv = pid_cmdline(pid)
        if argv is not None and (
            not argv
            or "nats-server" not in os.path.basename(argv[0])
            or str(self.store_dir) not in argv
        ):
            return None  # the pid was reused by something else
        return pid

    @staticmethod
    def _port_of(argv: list[str] | None) -> int | None:
        if not argv:
            return None
        for flag in ("-p", "--port"):
            if flag in argv[:-1]:
                with contextlib.suppress(ValueError):
                    return int(argv[argv.index(flag) + 1])
        return None

    def is_running(self) -> bool:
        return self.running_pid() is not None

    def ready(self) -> bool:
        return port_open(self.port) and run_blocking(
            lambda: _jetstream_ready(self.url, self.probe), 10.0
        )

    def config_text(self) -> str | None:
        """The config file for -c (None when the command-line flags say everything)."""
        parts: list[str] = []
        if self.server_name:
            parts.append(f"server_name: {self.server_name}\n")
        if self.auth_conf is not None:
            parts.append(self.auth_conf.read_text())
        jetstream = [
            f"  {name}: {value}" for name, value in (
                ("sync_interval", self.sync),
                ("max_memory_store", self.max_memory_store),
                ("max_file_store", self.max_file_store),
            ) if value is not None
        ]
        if jetstream:
            # store_dir stays the -sd flag: the server refuses it in both places.
            parts.append("jetstream {\n" + "\n".join(jetstream) + "\n}\n")
        if self.cluster_port:
            routes = "\n".join(f"    nats-route://127.0.0.1:{port}" for port in self.routes)
            parts.append(
                f"cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{self.cluster_port}\n"
                f"  routes: [\n{routes}\n  ]\n}}\n"
            )
        if self.tls is not None:
            lines = [f'  cert_file: "{self.tls[0]}"', f'  key_file: "{self.tls[1]}"']
            if self.tls_ca is not None:
                lines += [f'  ca_file: "{self.tls_ca}"', "  verify: true"]
            parts.append("tls {\n" + "\n".join(lines) + "\n}\n")
        if not parts:
            return None
        return "\n".join(["# Written by tools.devstack on every start.\n", *parts])

    def _write_config(self) -> Path | None:
        text = self.config_text()
        if text is None:
            return None
        conf = self.store_dir.parent / f"{self.store_dir.name}.conf"
        conf.write_text(text)
        return conf

    def start(self, timeout: float = 30.0) -> str:
        """Start (or adopt the already running) server; return its URL once JetStream answers."""
        self.launch()
        self.wait_ready(timeout)
        return self.url

    def launch(self) -> None:
        """Start the process (or adopt the running one) without waiting for JetStream."""
        pid = self.running_pid()
        if pid is not None:
            port = self._port_of(pid_cmdline(pid)) or self.port
            if port:
                self.pid, self.port, self.adopted = pid, port, True
                return
        binary = self.binary = ensure_binaries(("nats-server",))["nats-server"]
        if not self.port:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise DevStackError(f"port {self.port} for nats-server is already in use")
        for what, port in (("cluster", self.cluster_port), ("monitoring", self.monitor_port)):
            if port and not port_is_free(port):
                raise DevStackError(f"{what} port {port} for nats-server is already in use")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.monitor_port:
            cmd += ["-m", str(self.monitor_port)]
        conf = self._write_config()
        if conf is not None:
            cmd += ["-c", str(conf)]
        env = dict(os.environ)
        if self.memory_limit is not None:
            env["GOMEMLIMIT"] = self.memory_limit
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid, self.adopted = self._proc.pid, False
        write_pid_file(self.pid_file, self._proc.pid)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until JetStream answers on this server; stop a server we started if it never does."""
        proc = self._proc

        def up() -> bool:
            if proc is not None and proc.poll() is not None:
                raise DevStackError(
                    f"nats-server exited with {proc.returncode}; see {self.log_file}:\n"
                    + tail(self.log_file)
                )
            return self.ready()

        try:
            wait_until(up, timeout, f"NATS JetStream on {self.url}", interval=0.05)
        except BaseException:
            if not self.adopted:
                self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (then SIGKILL after `timeout`) the server, whether started or adopted."""
        pid = self.pid if self.pid is not None and pid_alive(self.pid) else self.running_pid()
        if pid is not None:
            terminate_pid(pid, timeout)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        if self.pid_file.exists() and self.running_pid() is None:
            self.pid_file.unlink(missing_ok=True)
        self.pid = None

