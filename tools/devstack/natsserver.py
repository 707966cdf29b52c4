"""A private `nats-server -js` for `make up` and the test fixtures."""

from __future__ import annotations

import contextlib
import os
import subprocess
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

    def _write_config(self) -> Path | None:
        """The config file for -c: the auth fragment and the tls block (None without either)."""
        if self.auth_conf is None and self.tls is None:
            return None
        parts = ["# Written by tools.devstack on every start.\n"]
        if self.auth_conf is not None:
            parts.append(self.auth_conf.read_text())
        if self.tls is not None:
            lines = [f'  cert_file: "{self.tls[0]}"', f'  key_file: "{self.tls[1]}"']
            if self.tls_ca is not None:
                lines += [f'  ca_file: "{self.tls_ca}"', "  verify: true"]
            parts.append("tls {\n" + "\n".join(lines) + "\n}\n")
        conf = self.store_dir.parent / f"{self.store_dir.name}.conf"
        conf.write_text("\n".join(parts))
        return conf

    def start(self, timeout: float = 30.0) -> str:
        """Start (or adopt the already running) server; return its URL once JetStream answers."""
        pid = self.running_pid()
        if pid is not None:
            port = self._port_of(pid_cmdline(pid)) or self.port
            if port:
                self.pid, self.port, self.adopted = pid, port, True
                wait_until(self.ready, timeout, f"NATS JetStream on {self.url}", interval=0.1)
                return self.url
        binary = self.binary = ensure_binaries(("nats-server",))["nats-server"]
        if not self.port:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise DevStackError(f"port {self.port} for nats-server is already in use")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        conf = self._write_config()
        if conf is not None:
            cmd += ["-c", str(conf)]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid, self.adopted = self._proc.pid, False
        write_pid_file(self.pid_file, self._proc.pid)
        proc = self._proc

        def up() -> bool:
            if proc.poll() is not None:
                raise DevStackError(
                    f"nats-server exited with {proc.returncode}; see {self.log_file}:\n"
                    + tail(self.log_file)
                )
            return self.ready()

        try:
            wait_until(up, timeout, f"NATS JetStream on {self.url}", interval=0.05)
        except BaseException:
            self.stop()
            raise
        return self.url

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

