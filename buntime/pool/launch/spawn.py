"""
L{SpawnLauncher}: a fresh interpreter per worker (C{python -m buntime.pool.child}).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from buntime.cpus import child_env
from buntime.pool.launch.launcher import (
    CHILD_MODULE,
    FROM_CHILD,
    OUTPUT_GRACE,
    TO_CHILD,
    WORKER_FDS,
    ILauncher,
    LaunchedProcess,
    LauncherUnavailable,
    LaunchSpec,
    exit_code,
    output_readers,
)
from buntime.pool.output import Write


@define(eq=False)
class _ChildWriter:
    """The transport AMP writes to: the worker's fd 3 (pattern of ampoule's AMPConnector)."""

    process: Any
    disconnecting: bool = False

    def write(self, data: bytes) -> None:
        self.process.writeToChild(TO_CHILD, data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.process.closeChildFD(TO_CHILD)
        self.process.closeChildFD(FROM_CHILD)

    abortConnection = loseConnection

    def getPeer(self) -> tuple[str, ...]:
        return ("subprocess",)

    def getHost(self) -> tuple[str, ...]:
        return ("runtime",)


class _WorkerProcess(ProcessProtocol):
    """A spawned worker: AMP on fds 3/4, its output from fds 1, 2 and 5, exit code."""

    def __init__(
        self, protocol: amp.AMP, on_output: Callable[[Write], None], clock: IReactorTime
    ) -> None:
        self.amp = protocol
        self.exited: Deferred = Deferred()
        self.lines = output_readers(on_output)
        self._amp_lost = False
        self._clock = clock
        self._closing: Any = None

    def connectionMade(self) -> None:
        self.amp.makeConnection(_ChildWriter(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == FROM_CHILD:
            self.amp.dataReceived(data)
        elif childFD in self.lines:
            self.lines[childFD].feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == FROM_CHILD:
            self._lose_amp(Failure(ConnectionError("the worker closed its channel")))
        elif childFD in self.lines:
            self.lines[childFD].flush()

    def processExited(self, reason: Failure) -> None:
        self._lose_amp(reason)
        if not self.exited.called:
            self.exited.callback(exit_code(reason))
            # a process it left behind may hold its pipes open: read them a
            # while longer, then close them
            self._closing = self._clock.callLater(OUTPUT_GRACE, self._close_pipes)

    def processEnded(self, reason: Failure) -> None:
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        for splitter in self.lines.values():
            splitter.flush()
        self.processExited(reason)

    def _close_pipes(self) -> None:
        if self.transport is not None:
            for fd in WORKER_FDS:
                self.transport.closeChildFD(fd)

    def _lose_amp(self, reason: Failure) -> None:
        if not self._amp_lost:
            self._amp_lost = True
            self.amp.connectionLost(reason)


@implementer(ILauncher)
@define(eq=False)
class SpawnLauncher:
    """
    Starts each worker as C{sys.executable -m buntime.pool.child} in its app
    dir; C{reactor} provides C{IReactorProcess} and C{IReactorTime}.
    """

    reactor: Any
    cpus: frozenset[int] | None = None
    """The CPUs each worker runs on (C{None}: any)."""

    def start(self) -> Deferred:
        return succeed(None)

    def stop(self) -> Deferred:
        return succeed(None)

    def launch(
        self, spec: LaunchSpec, protocol: amp.AMP, on_output: Callable[[Write], None]
    ) -> Deferred:
        process = _WorkerProcess(protocol, on_output, self.reactor)
        try:
            transport = self.reactor.spawnProcess(
                process,
                sys.executable,
                [sys.executable, "-m", CHILD_MODULE],
                env={**spec.env, **child_env(self.cpus)},
                path=spec.app_dir,
                childFDs=WORKER_FDS,
            )
        except OSError as error:  # out of fds or processes: the runtime's trouble
            return fail(LauncherUnavailable(f"cannot start a worker process: {error}"))
        except Exception:
            return fail()

        def send(signum: int) -> None:
            try:
                transport.signalProcess(signum)
            except ProcessExitedAlready:
                pass

        return succeed(LaunchedProcess(transport.pid, process.exited, send))


# -- fork -------------------------------------------------------------------
