"""What a process holds in memory, as the kernel counts it (Linux /proc), and ways to give back
what it no longer uses: the C heap's free pages, and the library pages it only needed to start.

glibc's malloc serves Python's larger objects (message bodies, insert bodies of a few MiB).
By default its mmap threshold rises to the largest block freed so far, after which such
blocks come from the heap, and a heap only shrinks from its top: a process that builds a few
MiB strings again and again keeps every hole they leave. `tune_malloc` pins the threshold
(large blocks are mapped and unmapped whole) and caps the thread arenas; `trim_heap` hands
free heap pages back.

A shared library's pages that were read at start-up (an embedded engine's static initialisers
touch most of its code once) stay resident until the kernel needs the memory. Pages of a
read-only, file-backed mapping that nothing ever wrote to are byte-for-byte the file: dropping
them from the process loses nothing, and the ones still in use come back on the next access
(from the page cache). `drop_clean_library_pages` does that for the libraries whose path
contains a marker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
# glibc mallopt parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss_kb: int = 0
    private_dirty_kb: int = 0
    anonymous_kb: int = 0

    @property
    def clean_file_copy(self) -> bool:
        """Read-only, file-backed, never written: identical to the file on disk."""
        return (
            bool(self.path) and self.path.startswith("/") and "w" not in self.perms
            and self.private_dirty_kb == 0 and self.anonymous_kb == 0
        )


def parse_smaps(text: str) -> list[Mapping]:
    """The mappings of a /proc/<pid>/smaps text, with the sizes this module uses."""
    out: list[Mapping] = []
    head: list[str] | None = None
    sizes: dict[str, int] = {}

    def close() -> None:
        if head is not None:
            start, end = (int(x, 16) for x in head[0].split("-"))
            out.append(Mapping(
                start, end, head[1], head[5] if len(head) > 5 else "",
                sizes.get("Rss", 0), sizes.get("Private_Dirty", 0), sizes.get("Anonymous", 0),
            ))

    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0].endswith(":"):
            if len(fields) >= 2 and fields[1].isdigit():
                sizes[fields[0][:-1]] = int(fields[1])
            continue
        if "-" in fields[0]:
            close()
            head, sizes = fields, {}
    close()
    return out


def rss_kb(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and RssShmem of a process in KiB ({} when it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_malloc(mmap_threshold: int = 256 * 1024, arenas: int = 2) -> bool:
    """Pin glibc's mmap threshold and cap its arenas (see above); False where it cannot."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = libc.mallopt(M_TRIM_THRESHOLD, 4 * mmap_threshold) == 1 and ok
    return bool(libc.mallopt(M_ARENA_MAX, arenas) == 1) and ok


def trim_heap() -> None:
    """Return the C heap's free pages to the system (glibc malloc_trim)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def drop_clean_library_pages(marker: str) -> int:
    """Drop this process's resident pages of clean, read-only mappings of files whose path
    contains `marker`; return how many KiB were resident there. A no-op off Linux."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        maps = parse_smaps(Path("/proc/self/smaps").read_text())
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    dropped = 0
    for m in maps:
        if marker not in m.path or not m.clean_file_copy or not m.rss_kb:
            continue
        if madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            dropped += m.rss_kb
        else:
            log.debug("madvise(%s) failed: errno %d", m.path, ctypes.get_errno())
    return dropped
