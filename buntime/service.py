"""
The runtime's service tree: logging, then the worker pool, then plugins,
then the web endpoint.  Children start in that order and stop one after the
other in reverse order, under a 30 s cap.  L{buntime.wiring} builds it.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver
from twisted.python.components import Componentized

from buntime.logs import log
from buntime.logs.service import LoggingService
from buntime.web.server import WebService
from buntime.web.state import RuntimeState

SHUTDOWN_CAP = 30.0


before_exit: list[Callable[[int], None]] = []
"""Called with the status by L{exit_now} before it leaves (L{buntime.tap.report_failed_start})."""


def exit_now(code: int) -> None:
    """Leave the process at once (after flushing what was written)."""
    for hook in before_exit:
        hook(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


@define(eq=False)
class RuntimeService(MultiService):
    """
    The whole runtime.  Ready (for C{/api/health/ready}) once every child
    started and the port listens.  Stopping: readiness turns 503 at once,
    the runtime goes on serving for C{drain_delay} seconds (so a load
    balancer takes it out of rotation first), then walks the children in
    reverse, each finishing before the next (the web side stops listening
    and waits for the requests in flight); C{exit} forces code 1 when that
    takes more than C{shutdown_timeout} seconds.
    """

    reactor: Any
    state: RuntimeState
    web: WebService
    exit: Callable[[int], None] = exit_now
    on_serving: list[Callable[[], Any]] = field(factory=list)
    on_stopping: list[Callable[[], object]] = field(factory=list)
    """Called when the drain begins (after C{drain_delay}), before any child stops."""
    drain_delay: float = 0.0
    shutdown_timeout: float = SHUTDOWN_CAP
    take_signals: bool = False
    """Handle SIGTERM and SIGINT itself (under twistd): a graceful stop, then exit 0."""
    _deadline: Any = None
    _signalled: bool = False

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)

    def setServiceParent(self, parent: Any) -> None:
        """
        Under twistd C{parent} is the application: twistd's own log observer
        becomes the logging service's L{TwistdLog}, so that Twisted's events
        are written once, by the logging service (a C{--logger} still wins).
        """
        MultiService.setServiceParent(self, parent)
        if isinstance(parent, Componentized):
            logging = self.getServiceNamed("logging")
            parent.setComponent(ILogObserver, logging.twistd_log)

    def startService(self) -> None:
        MultiService.startService(self)
        self.web.listening.addCallback(self._serving)
        if self.take_signals:
            self.reactor.callWhenRunning(self._take_signals)

    def _take_signals(self) -> None:
        """
        After the reactor's own handlers: a stop by signal is the graceful
        stop (drain included) ending in exit 0, as for any other stop; a
        second signal while stopping leaves at once (status 1).
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._stop_on_signal, signal.Signals(signum).name)

    def _stop_on_signal(self, name: str) -> None:
        if self._signalled:
            log("warn", "buntime:runtime:signal-again", f"{name} again while stopping: exiting now")
            self._leave(1)
            return
        self._signalled = True
        log("info", "buntime:runtime:signal", f"{name}: stopping gracefully", signal=name)
        self.reactor.stop()

    async def _serve(self) -> None:
        for hook in self.on_serving:
            await maybeDeferred(hook)
        self.state.started = True
        log("info", "buntime:runtime:ready", "Runtime ready")

    def _serving(self, port: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._serve()).addCallback(lambda _: port)

    def stopService(self) -> Deferred[None]:
        self.state.stopping = True  # readiness answers 503 from now on
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.drain_delay > 0:
            log(
                "info",
                "buntime:runtime:draining",
                f"Stopping: not ready any more, still serving for {self.drain_delay:g}s",
                drain_delay=self.drain_delay,
            )
            await deferLater(self.reactor, self.drain_delay)
        log("info", "buntime:runtime:stopping", "Shutting down")
        for hook in self.on_stopping:
            hook()
        self._deadline = self.reactor.callLater(self.shutdown_timeout, self._too_slow)
        await self._stop_children()

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(IService(child).stopService)
            except Exception as error:
                log("error", "buntime:runtime:stop-failed", f"{child.name} failed to stop: {error}")
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    def _too_slow(self) -> None:
        log(
            "error",
            "buntime:runtime:shutdown-timeout",
            f"Shutdown took longer than {self.shutdown_timeout:g}s; forcing exit",
        )
        self._leave(1)

    def _leave(self, code: int) -> None:
        """Exit at once with C{code}, the log lines still buffered written first."""
        logging = self.namedServices.get("logging")
        if isinstance(logging, LoggingService):
            logging.flush()
        self.exit(code)


GC_THRESHOLD = 20_000
"""Allocations between young-generation collections once serving (Python's default: 700)."""


def settle_memory() -> None:
    """
    Once the runtime serves: what start-up made (modules, plugins, config)
    lives as long as the process, so move it out of the garbage collector's
    sight; and collect the young generation less often, since each
    collection walks every object of the requests in flight, however few
    of them are garbage.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, middle, old)


def fatal_exit(reason: str) -> None:
    """Log a startup failure as one line and leave with status 1."""
    log("error", "buntime:runtime:fatal", reason)
    exit_now(1)
