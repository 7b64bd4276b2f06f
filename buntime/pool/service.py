"""The worker pool as a child service of the runtime."""

from __future__ import annotations

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from buntime.logs import log
from buntime.pool.launch.launcher import ILauncher
from buntime.pool.pool import WorkerPool


@define(eq=False)
class PoolService(Service):
    """
    Starts the launcher (the fork template, in fork mode) and the pool's
    periodic checks; on stop, retires every worker, then stops the launcher.
    C{launcher_ready} fires once workers can be started.
    """

    pool: WorkerPool
    launcher: ILauncher
    launcher_ready: Deferred[None] | None = field(default=None)

    def startService(self) -> None:
        Service.startService(self)
        self.launcher_ready = self.launcher.start()
        self.launcher_ready.addErrback(self._launcher_failed)
        self.pool.start()

    def _launcher_failed(self, failure: Failure) -> None:
        log(
            "error",
            "buntime:pool:launcher-failed",
            f"The worker launcher failed to start: {failure.getErrorMessage()}",
        )

    async def _stop(self) -> None:
        await self.pool.stop()
        await self.launcher.stop()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())
