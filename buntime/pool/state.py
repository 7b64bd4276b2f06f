"""
What the pool holds: its settings (L{PoolConfig}), each app version it runs
(L{PoolApp}), and per app directory its workers, its queue and its failures
(L{_AppState}, private to the pool package).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import define, field, frozen
from twisted.internet.task import LoopingCall

from buntime.http import Response
from buntime.pool.queues import WaitQueue
from buntime.pool.worker import Worker


@frozen
class PoolConfig:
    """Pool-wide settings (from L{buntime.config}); C{delay} is DELAY_MS in seconds."""

    pool_size: int
    ephemeral_concurrency: int
    ephemeral_queue: int
    delay: float
    production: bool
    ready_timeout: float = 30.0


@frozen
class PoolApp:
    """One app version as the pool needs it; C{key} (its directory) keys its workers."""

    key: str
    name: str
    version: str
    dir: str
    manifest: Any  # buntime.manifest.AppManifest
    env: Mapping[str, str]
    label: str = field(init=False, eq=False)
    """C{name@version}."""

    @label.default
    def _label(self) -> str:
        return f"{self.name}@{self.version}"


@define(eq=False)
class _AppState:
    """The pool's view of one app directory."""

    app: PoolApp
    workers: list[Worker] = field(factory=list)
    queue: WaitQueue = field(factory=WaitQueue)
    failures: int = 0
    retry_at: float = 0.0
    last_failure: Response | None = None
    checker: LoopingCall | None = None
    installed: bool = False
