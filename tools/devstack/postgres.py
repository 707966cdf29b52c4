"""A private PostgreSQL cluster for `make up` and the test fixtures."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from tools.devstack.binaries import ensure_binaries, find_binary
from tools.devstack.procs import (
    DevStackError,
    free_port,
    pid_alive,
    pid_cmdline,
    port_is_free,
    port_open,
    tail,
    terminate_pid,
    wait_until,
    write_pid_file,
)


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """Prefix `cmd` so it runs as the `postgres` user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", "postgres", "--", *cmd]


def _postgres_ids() -> tuple[int, int]:
    import pwd  # POSIX only; needed only as root

    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise DevStackError(
            "running as root needs a 'postgres' user (apt-get install postgresql creates it)"
        ) from exc
    return entry.pw_uid, entry.pw_gid



class PostgresCluster:
    """A private PostgreSQL cluster in `data_dir` (trust auth, user `postgres`, 127.0.0.1 only).

    As root every server-side command runs as the `postgres` user via `runuser`, and
    `data_dir` is chowned to it; its parent directories must be traversable by that user.
    """

    _MAX_SOCKET_PATH = 100  # sun_path is 108 bytes, minus "/.s.PGSQL.NNNNN"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int = 0,
        *,
        pid_file: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.pid_file = Path(pid_file) if pid_file else None
        self.log_file = Path(log_file) if log_file else self.data_dir.parent / "postgres.log"
        self.pid: int | None = None
        self.adopted = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def socket_dir(self) -> Path:
        if len(str(self.data_dir)) + 16 <= self._MAX_SOCKET_PATH:
            return self.data_dir
        return Path("/tmp")

    def _postmaster(self) -> tuple[int, int] | None:
        """(pid, port) from postmaster.pid, when that file exists and parses."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None

    def running_pid(self) -> int | None:
        """Pid of the live postmaster serving this data dir, if any."""
        info = self._postmaster()
        if info is None or not pid_alive(info[0]):
            return None
        argv = pid_cmdline(info[0])
        if argv is not None and (not argv or "postgres" not in " ".join(argv)):
            return None
        return info[0]

    def is_running(self) -> bool:
        return self.running_pid() is not None

    def ready(self) -> bool:
        tool = find_binary("pg_isready")
        if tool is None:
            return port_open(self.port)
        result = subprocess.run(
            [tool, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-t", "2"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return result.returncode == 0

    def _run(self, cmd: list[str], *, check: bool = True, timeout: float = 120.0) -> str:
        result = subprocess.run(
            _as_postgres_user(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=timeout,
            cwd="/" if os.geteuid() == 0 else None,
        )
        output = result.stdout.decode(errors="replace")
        if check and result.returncode != 0:
            raise DevStackError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{output}")
        return output

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if os.geteuid() == 0:
            uid, gid = _postgres_ids()
            if self.data_dir.stat().st_uid != uid:
                for root, dirs, files in os.walk(self.data_dir):
                    for name in (*dirs, *files):
                        os.lchown(os.path.join(root, name), uid, gid)
                os.chown(self.data_dir, uid, gid)
            probe = subprocess.run(
                _as_postgres_user(
                    ["test", "-w", str(self.data_dir), "-a", "-x", str(self.data_dir)]
                ),
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if probe.returncode != 0:
                raise DevStackError(
                    f"user postgres cannot reach {self.data_dir}: make its parent directories "
                    "world-traversable (chmod o+x)"
                )

    def start(self, timeout: float = 60.0) -> str:
        """initdb if needed, start (or adopt) the server; return the DSN once it accepts."""
        bins = ensure_binaries(("initdb", "pg_ctl", "pg_isready"))
        info = self._postmaster()
        if info is not None and self.running_pid() is not None:
            self.pid, self.port, self.adopted = info[0], info[1], True
            wait_until(self.ready, timeout, f"PostgreSQL on port {self.port}", interval=0.1)
            self._write_pid_file()
            return self.dsn
        if not self.port:
            # reuse the port of a previous (crashed) run, so DATABASE_URL stays valid
            self.port = info[1] if info is not None and port_is_free(info[1]) else free_port()
        elif not port_is_free(self.port):
            raise DevStackError(f"port {self.port} for PostgreSQL is already in use")
        self._prepare_dir()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    bins["initdb"],
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        # Durable settings (fsync, synchronous_commit): the scheduler acks NATS messages once
        # its transaction commits, so a commit that a killed PostgreSQL forgets would lose
        # work; `make chaos` kills it. A WAL flush costs ~0.2 ms here.
        options = (
            f"-p {self.port} -k {shlex.quote(str(self.socket_dir))} "
            "-c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        # Extra server options for profiling, e.g.
        # RATCHET_PG_OPTIONS="-c shared_preload_libraries=pg_stat_statements".
        if extra := os.environ.get("RATCHET_PG_OPTIONS", "").strip():
            options += " " + extra
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            # pg_ctl forks the postmaster, which keeps our log file descriptor; the file need not
            # be writable by the postgres user. A new session detaches it from our terminal.
            with open(self.log_file, "ab") as log:
                result = subprocess.run(
                    _as_postgres_user(
                        [
                            bins["pg_ctl"],
                            "-D",
                            str(self.data_dir),
                            "-o",
                            options,
                            "-w",
                            "-t",
                            str(max(5, int(deadline - time.monotonic()))),
                            "start",
                        ]
                    ),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=False,
                    start_new_session=True,
                    cwd="/" if os.geteuid() == 0 else None,
                )
            if result.returncode == 0:
                break
            # After a SIGKILL the old backends may hold shared memory for a moment: retry.
            if time.monotonic() >= deadline:
                raise DevStackError(
                    f"pg_ctl start failed ({result.returncode}); see {self.log_file}:\n"
                    + tail(self.log_file)
                )
            time.sleep(0.5)
        wait_until(self.ready, max(1.0, deadline - time.monotonic()), "pg_isready", interval=0.1)
        info = self._postmaster()
        self.pid, self.adopted = (info[0] if info else None), False
        self._write_pid_file()
        return self.dsn

    def _write_pid_file(self) -> None:
        if self.pid_file is not None and self.pid is not None:
            write_pid_file(self.pid_file, self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """`pg_ctl stop -m fast`; SIGTERM/SIGKILL the postmaster if that does not work."""
        pid = self.running_pid()
        if pid is not None:
            pg_ctl = find_binary("pg_ctl")
            if pg_ctl is not None:
                with contextlib.suppress(DevStackError, subprocess.TimeoutExpired):
                    self._run(
                        [
                            pg_ctl,
                            "-D",
                            str(self.data_dir),
                            "stop",
                            "-m",
                            "fast",
                            "-w",
                            "-t",
                            str(int(timeout)),
                        ],
                        timeout=timeout + 5,
                    )
            if pid_alive(pid):
                terminate_pid(pid, timeout)
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        self.pid = None

