"""
The fork template's pages that its workers' starts copy, learned from the
workers themselves, and copied ahead by each spare while it waits.

A forked worker shares the template's memory until it writes to a page.
Python 3.11 writes the reference count of every object it uses, so a
worker's start copies some 600 of the template's pages (2.4 MB), one page
fault at a time, and most of them are the same pages in every start: the
code, types and objects every worker uses.  Those faults were about a
third of a cold start (see C{docs/performance.md}).

So the template looks, a little after each start, at which of its pages
the new worker holds a copy of (L{Learned.learn}: C{/proc/<pid>/pagemap},
a page present in the template and mapped by the worker alone), keeps the
last L{SAMPLES} such sets, and a spare copies the pages most of them hold
(L{copy_ahead}: C{madvise(MADV_POPULATE_WRITE)}, which faults each page in
for writing without changing it) while it waits for its launch.  A worker
then holds the copies it would have made anyway, made before its launch.

Where Linux lacks either (no C{/proc}, a kernel before 5.14), nothing is
learned or copied ahead, and starts are as they were.
"""

from __future__ import annotations

import array
import ctypes
import mmap
from collections import Counter, deque
from collections.abc import Iterable, Sequence

from attrs import define, field

from buntime._libc import libc

SAMPLES = 8
"""How many workers' copies are kept to learn from."""
LEARN_AFTER = 0.2
"""Seconds after a worker's launch before the template looks at what it copied (its start done)."""
LEARN_EVERY = 1.0
"""Seconds between two looks at most: each takes the template some milliseconds."""

_PAGE = mmap.PAGESIZE
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56  # "page exclusively mapped" (pagemap, Linux 4.2+)
_POPULATE_WRITE = 23  # MADV_POPULATE_WRITE (Linux 5.14+)

Range = tuple[int, int]
"""An address and a length, in bytes, both whole pages."""


def private_writable(pid: int | str = "self") -> list[Range]:
    """The private writable mappings of C{pid}: what a fork shares copy-on-write."""
    found = []
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
        for line in maps:
            span, permissions = line.split(None, 2)[:2]
            if permissions[1] == "w" and permissions[3] == "p":
                start, end = (int(address, 16) for address in span.split("-"))
                found.append((start, end - start))
    return found


def present(pid: int | str, regions: Iterable[Range], exclusive: bool) -> set[int]:
    """
    The addresses of the pages of C{pid} in C{regions} that are present in
    memory (and mapped by C{pid} alone, if C{exclusive}).
    """
    wanted = _PRESENT | _EXCLUSIVE if exclusive else _PRESENT
    pages: set[int] = set()
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
        for start, length in regions:
            pagemap.seek(start // _PAGE * 8)
            entries = array.array("Q")
            entries.frombytes(pagemap.read(length // _PAGE * 8))
            pages.update(
                start + index * _PAGE
                for index, entry in enumerate(entries)
                if entry & wanted == wanted
            )
    return pages


def ranges(pages: Iterable[int]) -> list[Range]:
    """C{pages} (addresses) as few ranges of adjacent pages, in order."""
    found: list[list[int]] = []
    for page in sorted(pages):
        if found and found[-1][0] + found[-1][1] == page:
            found[-1][1] += _PAGE
        else:
            found.append([page, _PAGE])
    return [(start, length) for start, length in found]


@define
class Learned:
    """
    The template's pages that its workers' starts copied: the copies of
    the last L{SAMPLES} workers it looked at, and as L{ranges} the pages
    that most of them hold (more than half).
    """

    samples: deque[frozenset[int]] = field(factory=lambda: deque(maxlen=SAMPLES))
    ranges: list[Range] = field(factory=list)

    def learn(self, pid: int) -> None:
        """
        Look at which of this process's pages its child C{pid} holds a copy
        of.  Nothing is learned if it is gone or C{/proc} cannot tell.
        """
        try:
            regions = private_writable()
            ours = present("self", regions, exclusive=False)
            theirs = present(pid, regions, exclusive=True)
        except (OSError, ValueError):
            return
        if not theirs:
            return  # gone meanwhile (its pagemap reads empty), or no flags shown
        self.samples.append(frozenset(ours & theirs))
        counts = Counter(page for sample in self.samples for page in sample)
        needed = len(self.samples) // 2 + 1
        self.ranges = ranges(page for page, count in counts.items() if count >= needed)


def copy_ahead(regions: Sequence[Range]) -> None:
    """
    In a spare: copy the pages of C{regions} now (each faulted in for
    writing; their contents stay).  A range no longer mapped, or a kernel
    without C{MADV_POPULATE_WRITE}, is skipped: the pages are copied when
    first written, as they would have been.
    """
    library = libc()
    if library is None or not regions:
        return
    madvise = library.madvise
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    for start, length in regions:
        madvise(start, length, _POPULATE_WRITE)
