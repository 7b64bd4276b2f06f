"""The C library of this process, for the few Linux calls Python does not wrap."""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


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


_kept: list[ctypes.Array[ctypes.c_char]] = []
"""The copies of the variables L{hide_environment_values} moved (C keeps pointers to them)."""


def hide_environment_values(hidden: Callable[[str], bool]) -> list[str]:
    """
    Wipe the values of the variables whose name is C{hidden} from the
    environment block this process started with, which Linux shows to every
    process of the same user in C{/proc/<pid>/environ} (the workers
    included: reading it needs no more than being able to signal us).  The
    process keeps them: C{os.environ} is Python's own copy, and C{getenv}
    finds each in a copy made here.  The names wiped, in order.
    """
    library = libc()
    if library is None or not sys.platform.startswith("linux"):
        return []
    try:
        block = ctypes.POINTER(ctypes.c_void_p).in_dll(library, "environ")
    except ValueError:
        return []
    wiped = []
    index = 0
    while block and (address := block[index]) is not None:
        index += 1
        entry = ctypes.string_at(address)
        name, equals, value = entry.partition(b"=")
        if not (equals and value and hidden(name.decode("utf-8", "replace"))):
            continue
        copy = ctypes.create_string_buffer(entry)
        _kept.append(copy)
        block[index - 1] = ctypes.addressof(copy)
        ctypes.memset(address + len(name) + 1, 0, len(value))
        wiped.append(name.decode("utf-8", "replace"))
    return wiped
