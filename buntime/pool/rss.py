"""
The resident memory of worker processes, for C{maxMemory}.

The runtime reads C{/proc/<pid>/statm} itself (one small read, no help from
the child); it does so when a request of the worker finishes, at most once
every L{CHECK_INTERVAL} seconds per worker (a read asked for sooner is made
once that interval is up), and on the app's periodic checks, so a busy
worker costs at most ten reads a second however many requests it serves.
"""

from __future__ import annotations

import os
from collections.abc import Callable

CHECK_INTERVAL = 0.1
"""Least seconds between two reads of one worker's RSS after its requests."""

RssSource = Callable[[int], int | None]
"""Resident bytes of a process by pid, or C{None} when unknown (it is gone)."""

_PAGE = os.sysconf("SC_PAGE_SIZE")


def read_rss(pid: int) -> int | None:
    """Resident bytes of C{pid} from C{/proc/<pid>/statm}; C{None} if unreadable."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def megabytes(size: int) -> float:
    return round(size / (1024 * 1024), 1)
