"""CPU seconds per stack process while a command runs: `python -m bench.cpu -- CMD ...`.

Reads utime + stime from /proc for every service in $RATCHET_RUN_DIR/pids (or .run/pids), NATS,
PostgreSQL with all its backends, and the command with its children, before and after the
command. With `--tasks N` it also prints CPU microseconds per task, which is how the hot path's
cost was split across hops (docs/architecture.md, "Performance notes").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = Path(os.environ.get("RATCHET_RUN_DIR") or ROOT / ".run").resolve()
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; fields after it are space-separated.
    return raw[raw.rindex(")") + 2:].split()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def cpu_s(pid: int, *, tree: bool) -> float:
    """utime + stime of `pid` (and, with tree, every live descendant plus reaped children)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    # fields[11..14] = utime, stime, cutime, cstime (stat fields 14..17)
    ticks = int(fields[11]) + int(fields[12])
    if tree:
        ticks += int(fields[13]) + int(fields[14])
        total = ticks / TICK
        for child in _children(pid):
            total += cpu_s(child, tree=True)
        return total
    return ticks / TICK


def stack_pids() -> dict[str, int]:
    out: dict[str, int] = {}
    for f in sorted((RUN / "pids").glob("*")):
        try:
            out[f.stem] = int(f.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def snapshot(pids: dict[str, int], cmd_pid: int | None) -> dict[str, float]:
    snap = {name: cpu_s(pid, tree=name in {"postgres", "pg"}) for name, pid in pids.items()}
    if cmd_pid is not None:
        snap["command"] = cpu_s(cmd_pid, tree=True)
    return snap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=0, help="tasks the command runs")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give a command after --")
    pids = stack_pids()
    before = snapshot(pids, None)
    proc = subprocess.Popen(cmd)
    last = snapshot(pids, proc.pid)
    while proc.poll() is None:
        # The command's children are gone once it exits: keep the last reading of its tree.
        last["command"] = max(last.get("command", 0.0), cpu_s(proc.pid, tree=True))
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
    after = snapshot(pids, None)
    after["command"] = last.get("command", 0.0)
    before["command"] = 0.0
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    total = sum(used.values())
    print(f"{'process':<12} {'cpu s':>8}" + (f" {'µs/task':>8}" if args.tasks else ""))
    for name, sec in sorted(used.items(), key=lambda kv: -kv[1]):
        per = f" {sec / args.tasks * 1e6:>8.0f}" if args.tasks else ""
        print(f"{name:<12} {sec:>8.2f}{per}")
    per = f" {total / args.tasks * 1e6:>8.0f}" if args.tasks else ""
    print(f"{'total':<12} {total:>8.2f}{per}")
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
