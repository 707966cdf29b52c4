"""Process, port and pid-file helpers the local stack is built from (standard library only)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class DevStackError(RuntimeError):
    """A local server could not be installed, started or stopped."""


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
    """Poll `predicate` until it is true; raise DevStackError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise DevStackError(f"timed out after {timeout:.0f}s waiting for {what}")
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
    with contextlib.suppress(DevStackError):
        wait_until(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit", interval=0.1)
        return False
    send(signal.SIGKILL)
    with contextlib.suppress(DevStackError):
        wait_until(lambda: not pid_alive(pid), 5.0, f"pid {pid} to die", interval=0.05)
    return True


def run_blocking(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60.0) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Safe to call whether or not the calling thread already runs (or owns) an event loop.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result(timeout=timeout)


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
