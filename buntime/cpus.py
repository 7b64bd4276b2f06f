"""
Which CPUs the runtime and its workers run on (C{RUNTIME_WORKER_CPUS}).

By default both run wherever the kernel puts them.  With C{others}, the
runtime keeps one CPU for itself and its workers (the fork template and
everything it forks) run on the rest; with a CPU list (C{1-3,5}), the
workers run on those and the runtime on the ones left, if any.  This is
what HAProxy's C{cpu-map} and uWSGI's C{cpu-affinity} do: the front door's
event loop is never queued behind a worker it just woke.  On kernels that
place a woken task on its waker's CPU (some virtual machines), that is
where it pays most: see docs/performance.md.

A child is told its CPUs in L{CPUS_VARIABLE} and takes them as its first
step (L{take_cpus}), before it forks or starts a thread, so that nothing
it starts runs elsewhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

from attrs import frozen

CPUS_VARIABLE = "BUNTIME_WORKER_CPUS"
"""The variable a child (the fork template, a spawned worker) reads its CPUs from."""

_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_cpu_list(text: str) -> frozenset[int]:
    """
    The CPUs of a list such as C{0-3,5} (as C{taskset -c} and
    C{/proc/<pid>/status} write them).

    @raise ValueError: C{text} is not such a list, or a range runs backwards.
    """
    text = text.replace(" ", "")
    if not _LIST.match(text):
        raise ValueError(f"{text!r} is not a CPU list such as 1-3,5")
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        low, high = int(first), int(last or first)
        if high < low:
            raise ValueError(f"the CPU range {part} runs backwards")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def cpu_list(cpus: frozenset[int]) -> str:
    """C{cpus} as a list such as C{0-3,5} (the form L{parse_cpu_list} reads)."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def check_setting(value: str) -> str:
    """
    C{RUNTIME_WORKER_CPUS} as given: C{all}, C{others} or a CPU list.

    @raise ValueError: anything else.
    """
    value = value.strip().lower() or "all"
    if value not in ("all", "others"):
        parse_cpu_list(value)
    return value


@frozen
class CpuPlan:
    """Where the runtime (C{runtime}) and its workers (C{workers}) run; C{None}: anywhere."""

    runtime: frozenset[int] | None
    workers: frozenset[int] | None


def plan(setting: str, allowed: frozenset[int]) -> CpuPlan:
    """
    The CPUs of the runtime and its workers for C{setting} (see
    L{check_setting}), among the C{allowed} ones (the runtime's own).

    @raise ValueError: the setting leaves the workers no CPU.
    """
    if setting == "all" or (len(allowed) < 2 and setting == "others"):
        return CpuPlan(None, None)
    if setting == "others":
        kept = min(allowed)
        return CpuPlan(frozenset({kept}), allowed - {kept})
    workers = parse_cpu_list(setting) & allowed
    if not workers:
        raise ValueError(
            f"none of the CPUs {setting} is one this process may use ({cpu_list(allowed)})"
        )
    rest = allowed - workers
    return CpuPlan(rest or None, workers)


def child_env(cpus: frozenset[int] | None) -> dict[str, str]:
    """What a child's environment gets to run on C{cpus} (L{take_cpus}); C{None}: anywhere."""
    return {CPUS_VARIABLE: cpu_list(cpus)} if cpus else {}


def keep_cpus(cpus: frozenset[int]) -> None:
    """Run this process (each of its threads) on C{cpus} only."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile


def take_cpus(environ: MutableMapping[str, str] = os.environ) -> None:
    """
    In a child: run on the CPUs its parent gave it in L{CPUS_VARIABLE}, if
    any, and take the variable out of C{environ} (an app never sees it).  A
    list this machine cannot honour is left alone: the child still runs,
    anywhere.
    """
    given = environ.pop(CPUS_VARIABLE, None)
    if not given:
        return
    try:
        os.sched_setaffinity(0, parse_cpu_list(given))
    except (OSError, ValueError):
        pass
