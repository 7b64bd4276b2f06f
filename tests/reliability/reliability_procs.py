"""
What the reliability tests read of processes through C{/proc}: CPU time of a
process tree (dead children included), open file descriptors, children and
zombies, resident memory.  Linux only: L{PROC} says whether it is there.
"""

from __future__ import annotations

import os
from typing import Any

from e2e_apps import rss_kb  # noqa: F401  # read here with the rest of /proc
from twisted.internet import task

PROC = os.path.isdir("/proc/self/fd") and os.path.exists("/proc/self/stat")
"""Whether C{/proc} is there to read (the tests that need it skip without it)."""

TICK = os.sysconf("SC_CLK_TCK") if PROC else 100


def _stat(pid: int) -> list[str] | None:
    """The fields of C{/proc/<pid>/stat} after the command name (state first)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _table() -> dict[int, tuple[str, int]]:
    """Every process: pid -> (state, parent pid)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                table[int(entry)] = (fields[0], int(fields[1]))
    return table


def tree(pid: int, zombies: bool = True) -> set[int]:
    """Every process below C{pid} (children, grandchildren ...), zombies with C{zombies}."""
    table = _table()
    below: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {
            child
            for child, (state, parent) in table.items()
            if parent in frontier and (zombies or state not in ("Z", "X"))
        }
        frontier = children - below
        below |= children
    return below


def children(pid: int) -> dict[int, str]:
    """The direct children of C{pid} with their state (C{Z}: a zombie)."""
    return {child: state for child, (state, parent) in _table().items() if parent == pid}


def zombies_below(pid: int) -> set[int]:
    """Zombie processes anywhere below C{pid}."""
    table = _table()
    return {child for child in tree(pid) if table.get(child, ("", 0))[0] == "Z"}


def cpu_seconds(pid: int) -> float:
    """
    CPU seconds (user + system) that C{pid} and everything below it used:
    each live process's own time plus that of its reaped children
    (C{cutime}, C{cstime}), so workers that came and went are counted.
    """
    total = 0
    for each in {pid, *tree(pid)}:
        fields = _stat(each)
        if fields is not None:
            total += sum(int(value) for value in fields[11:15])
    return total / TICK


def own_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of C{pid} alone."""
    fields = _stat(pid)
    return sum(int(value) for value in fields[11:13]) / TICK if fields else 0.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)
