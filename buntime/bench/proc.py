"""
Memory and CPU time of processes and of their descendants, read from C{/proc}.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


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


def cpu_jiffies(path: str = "/proc/stat") -> tuple[int, int]:
    """The machine's busy and total CPU time so far, in ticks (C{/proc/stat}'s C{cpu} line)."""
    with open(path) as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return sum(fields) - idle, sum(fields)


def wait_until_quiet(
    most: float = 10.0,
    window: float = 0.25,
    busy_at_most: float = 0.15,
    sample: Callable[[], tuple[int, int]] = cpu_jiffies,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """
    Wait until the machine's CPUs were busy for at most C{busy_at_most} of
    two C{window}s in a row (the runtimes a run has started settle: their
    templates fork spares, their workers start), for at most C{most}
    seconds; whether it got that quiet.
    """
    deadline = clock() + most
    quiet_windows = 0
    before = sample()
    while clock() < deadline:
        sleep(window)
        after = sample()
        busy, total = after[0] - before[0], after[1] - before[1]
        before = after
        quiet_windows = quiet_windows + 1 if total > 0 and busy <= busy_at_most * total else 0
        if quiet_windows >= 2:
            return True
    return False
