"""
A worker never outlives its parent (the runtime, or the fork template).

Closing the AMP channel ends an idle worker, but a handler that blocks the
event loop would keep an orphan alive; the kernel's parent-death signal
(Linux C{prctl(PR_SET_PDEATHSIG)}) kills it whatever it is doing.
"""

from __future__ import annotations

import os
import signal

from buntime._libc import libc

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> bool:
    """
    Have the kernel SIGKILL this process when C{parent} (the pid seen at
    start) exits; exit at once if it is already gone.  C{False} where the
    platform cannot do it.
    """
    prctl = getattr(libc(), "prctl", None)
    if prctl is None or prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the signal was armed
    return True
