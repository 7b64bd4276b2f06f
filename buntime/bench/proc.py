"""
Memory and CPU time of processes and of their descendants, read from C{/proc}.
"""

from __future__ import annotations

import os


def rss_mb(pid: int) -> float | None:
    """The resident memory of C{pid} in MB, C{None} when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def hwm_mb(pid: int) -> float | None:
    """The peak resident memory of C{pid} in MB, C{None} when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int, own: bool = True, reaped: bool = False) -> float:
    """
    User plus system CPU time so far of C{pid} (C{own}) and of its children
    that ended and were waited for (C{reaped}); 0 when it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = 0
    if own:
        ticks += int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """
    CPU seconds of the runtime C{pid}, and of everything below it: its
    living descendants and those that ended (an ephemeral or evicted worker
    is counted in the process that waited for it, the runtime or the fork
    template).
    """
    below = _cpu_seconds(pid, own=False, reaped=True)
    below += sum(_cpu_seconds(child, reaped=True) for child in descendants(pid))
    return _cpu_seconds(pid), below


def descendants(pid: int) -> list[int]:
    """The pids of the living descendants of C{pid}."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
