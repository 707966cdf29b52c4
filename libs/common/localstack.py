"""Private NATS JetStream and PostgreSQL instances for development and tests.

Used by `scripts/stack.py` (`make up`) and `tests/conftest.py`. Only the standard library is
imported at module level, so `python3 scripts/stack.py down` works without the venv; nats-py is
imported lazily by the JetStream readiness probe.

Both servers can *adopt* an instance that is already running (e.g. from an earlier `make up`):
`NatsServer` by its pid file (the process's command line must match), `PostgresCluster` by the
`postmaster.pid` file in its data directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# binary → Debian package that provides it
_PACKAGES: dict[str, str] = {
    "nats-server": "nats-server",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "pg_isready": "postgresql",
    "postgres": "postgresql",
}
_PG_TOOLS = frozenset({"initdb", "pg_ctl", "pg_isready", "postgres"})
DEFAULT_BINARIES: tuple[str, ...] = ("nats-server", "initdb", "pg_ctl", "pg_isready")


class LocalStackError(RuntimeError):
    """A local server could not be installed, started or stopped."""


# --------------------------------------------------------------------------------------------
# binaries


def _pg_bin_dirs() -> list[str]:
    """`/usr/lib/postgresql/<major>/bin` directories, newest major first."""

    def major(path: str) -> int:
        try:
            return int(Path(path).parent.name)
        except ValueError:
            return -1

    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)


def find_binary(name: str) -> str | None:
    """Absolute path of `name`, or None. PostgreSQL tools prefer the versioned bin directory."""
    if name in _PG_TOOLS:
        for directory in _pg_bin_dirs():
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                return candidate
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/sbin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _privileged(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return cmd
    sudo = shutil.which("sudo")
    if sudo is None:
        raise LocalStackError(f"need root to run {shlex.join(cmd)} and sudo is not installed")
    return [sudo, *cmd]


def ensure_binaries(names: tuple[str, ...] = DEFAULT_BINARIES) -> dict[str, str]:
    """Find each binary; apt-get install the packages of the missing ones. Returns name → path."""
    paths = {name: find_binary(name) for name in names}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        packages = sorted({_PACKAGES.get(name, name) for name in missing})
        if shutil.which("apt-get") is None:
            raise LocalStackError(
                f"missing {', '.join(missing)} and apt-get is not available: "
                f"install {' '.join(packages)} by hand"
            )
        apt = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
        for cmd in (
            [*apt, "update"],
            [*apt, "install", "-y", "--no-install-recommends", *packages],
        ):
            subprocess.run(_privileged(cmd), check=True, stdin=subprocess.DEVNULL)
        paths = {name: find_binary(name) for name in names}
    result: dict[str, str] = {}
    for name, path in paths.items():
        if path is None:
            raise LocalStackError(f"{name} still not found after installing it")
        result[name] = path
    return result


# --------------------------------------------------------------------------------------------
# small process / network helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True when a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True when `pid` exists and is not a zombie (PID 1 here may never reap orphans)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    # "pid (comm) S ...": the state follows the last ')'
    state = stat.rsplit(")", 1)[-1].split()
    return not state or state[0] not in ("Z", "X")


def pid_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or None when unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def write_pid_file(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `predicate` until it is true; raise LocalStackError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise LocalStackError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def terminate_pid(pid: int, timeout: float = 15.0, *, group: bool = False) -> bool:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns True if it needed SIGKILL."""

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                try:
                    os.killpg(pid, sig)
                    return
                except (ProcessLookupError, PermissionError):
                    pass
            os.kill(pid, sig)

    if not pid_alive(pid):
        return False
    send(signal.SIGTERM)
    with contextlib.suppress(LocalStackError):
        wait_until(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit", interval=0.1)
        return False
    send(signal.SIGKILL)
    with contextlib.suppress(LocalStackError):
        wait_until(lambda: not pid_alive(pid), 5.0, f"pid {pid} to die", interval=0.05)
    return True


def run_blocking(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60.0) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Safe to call whether or not the calling thread already runs (or owns) an event loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout=timeout)


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
        raise LocalStackError(
            "running as root needs a 'postgres' user (apt-get install postgresql creates it)"
        ) from exc
    return entry.pw_uid, entry.pw_gid


# --------------------------------------------------------------------------------------------
# NATS


async def _jetstream_ready(url: str) -> bool:
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
    """A private `nats-server -js` bound to 127.0.0.1, with its file store in `store_dir`."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        port: int = 0,
        *,
        pid_file: str | os.PathLike[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).absolute()
        self.port = port
        self.pid_file = Path(pid_file) if pid_file else self.store_dir / "nats-server.pid"
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.pid: int | None = None
        self.adopted = False
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
        return port_open(self.port) and run_blocking(lambda: _jetstream_ready(self.url), 10.0)

    def start(self, timeout: float = 30.0) -> str:
        """Start (or adopt the already running) server; return its URL once JetStream answers."""
        pid = self.running_pid()
        if pid is not None:
            port = self._port_of(pid_cmdline(pid)) or self.port
            if port:
                self.pid, self.port, self.adopted = pid, port, True
                wait_until(self.ready, timeout, f"NATS JetStream on {self.url}", interval=0.1)
                return self.url
        binary = ensure_binaries(("nats-server",))["nats-server"]
        if not self.port:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise LocalStackError(f"port {self.port} for nats-server is already in use")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
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
                raise LocalStackError(
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


# --------------------------------------------------------------------------------------------
# PostgreSQL


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
            raise LocalStackError(f"{shlex.join(cmd)} failed ({result.returncode}):\n{output}")
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
                raise LocalStackError(
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
            raise LocalStackError(f"port {self.port} for PostgreSQL is already in use")
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
                raise LocalStackError(
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
                with contextlib.suppress(LocalStackError, subprocess.TimeoutExpired):
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


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' when unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
