"""The C library of this process, for the few Linux calls Python does not wrap."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL | None:
    """
    The C library, looked up once: the symbols already loaded into this
    process (no C{ldconfig} subprocess, as C{ctypes.util.find_library} runs).
    """
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
