"""
C{lowMemory: true}: a worker that keeps its resident memory small.

- glibc keeps at most two malloc arenas (threads share them instead of
  each growing its own), set with C{mallopt} so it works in forked workers;
- WSGI apps get 2 threads instead of 10;
- when the worker goes idle, a full garbage collection runs and
  C{malloc_trim} hands freed memory back to the operating system.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Mapping

from buntime._libc import libc
from buntime.manifest_fields import parse_bool

LOW_MEMORY_THREADS = 2
_M_ARENA_MAX = -8


def low_memory(environ: Mapping[str, str]) -> bool:
    """Whether the app's manifest (C{WORKER_CONFIG}) asks for low-memory mode."""
    try:
        config = json.loads(environ.get("WORKER_CONFIG") or "{}")
    except ValueError:
        return False
    if not isinstance(config, dict):
        return False
    try:  # read as the manifest's validation read it: "on", "Yes" and 1 too
        return parse_bool(config.get("lowMemory", False))
    except ValueError:
        return False


def limit_arenas() -> bool:
    """Cap glibc's malloc arenas at two; C{False} where that is not possible."""
    mallopt = getattr(libc(), "mallopt", None)
    return bool(mallopt is not None and mallopt(_M_ARENA_MAX, 2) == 1)


def release_memory() -> None:
    """Collect garbage and give freed heap memory back to the system."""
    gc.collect()
    trim = getattr(libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


GC_THRESHOLD = 20_000
"""Allocations between young-generation collections in a worker serving (Python's: 700)."""


def settle(frugal: bool) -> None:
    """
    Once the app is loaded: keep the collector away from what loading made
    (it lives as long as the worker), and collect the young generation less
    often than Python's default unless memory is tight.  No collection
    here: an ephemeral worker's start must stay quick.
    """
    gc.freeze()
    if not frugal:
        _, middle, old = gc.get_threshold()
        gc.set_threshold(GC_THRESHOLD, middle, old)
