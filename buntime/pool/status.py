"""
The states of a worker process, as the pool and its stats name them.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerStatus(StrEnum):
    """Where a worker is in its life: its C{status} in the pool's stats."""

    STARTING = "starting"
    ACTIVE = "active"
    IDLE = "idle"
    EPHEMERAL = "ephemeral"
    STOPPING = "stopping"
    OFFLINE = "offline"


STARTING, ACTIVE, IDLE, EPHEMERAL, STOPPING, OFFLINE = WorkerStatus
READY = frozenset({ACTIVE, IDLE, EPHEMERAL})
"""The states of a worker that takes requests."""
