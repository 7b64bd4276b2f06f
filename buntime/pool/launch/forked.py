"""
A worker the fork template made, as the runtime holds it: its pid and exit
(reported by the template, since the runtime is not its parent), and the
sockets it was handed, adopted by the reactor.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from buntime.pool.launch.launcher import OUTPUT_GRACE, LineSplitter
from buntime.pool.output import FrameReader


class OutputSocket(Protocol):
    """An adopted output socket of a forked worker."""

    def __init__(self, splitter: LineSplitter | FrameReader, closed: Deferred) -> None:
        self.splitter = splitter
        self.closed = closed

    def dataReceived(self, data: bytes) -> None:
        self.splitter.feed(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.splitter.flush()
        if not self.closed.called:
            self.closed.callback(None)


class _Given(Factory):
    """A factory handing out one protocol made beforehand (for an adopted socket)."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self.protocol_instance


def adopt(reactor: Any, sock: socket.socket, protocol: Protocol) -> None:
    """Hand C{sock} to the reactor with C{protocol}; C{sock} itself is closed."""
    sock.setblocking(False)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, _Given(protocol))
    sock.close()


@define(eq=False)
class ForkedWorker:
    """A worker the template forked: its pid, exit, and the output sockets' ends."""

    pid: int
    exited: Deferred
    sockets: list[OutputSocket] = field(factory=list)
    """The protocols reading its output's ends (closed once the exit is reported)."""
    code: int | None = None

    def report_exit(self, code: int, reactor: IReactorTime) -> None:
        """
        The template saw it exit: fire C{exited} once its output is read
        (L{OUTPUT_GRACE} at most: a child it left may keep it open).
        """
        if self.code is not None:
            return
        self.code = code
        pending = [s.closed for s in self.sockets if not s.closed.called]
        if not pending:
            self._fire()
            return
        timer = reactor.callLater(OUTPUT_GRACE, self._fire)
        remaining = [len(pending)]

        def closed(_: object) -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and timer.active():
                timer.cancel()
                self._fire()

        for d in pending:
            d.addCallback(closed)

    def _fire(self) -> None:
        if not self.exited.called:
            self.exited.callback(self.code)
        for sock in self.sockets:  # still open: held by a process the worker left
            if sock.transport is not None and not sock.closed.called:
                sock.transport.loseConnection()

    def send_signal(self, signum: int) -> None:
        """Signal the process, unless it is known to have exited (its pid may be reused)."""
        if self.code is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass
