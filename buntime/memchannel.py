"""
A twisted.web request without a socket: the in-memory channel a real
L{twisted.web.server.Request} writes to when the runtime renders a resource
itself (a plugin's routes, L{buntime.plugins.rendering}; an app's Klein or
twisted.web resource in its worker, L{buntime.pool.child.web}).

It imports nothing of the runtime: the worker's child process uses it too.
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES


class _Transport:
    """What C{request.transport} offers a resource: addresses, and closing the connection."""

    disconnecting = False

    def __init__(self, channel: MemoryChannel) -> None:
        self._channel = channel

    def getPeer(self) -> Any:
        return self._channel.getPeer()

    def getHost(self) -> Any:
        return self._channel.getHost()

    def loseConnection(self) -> None:
        self._channel.loseConnection()

    abortConnection = loseConnection


class MemoryChannel:
    """
    Just enough of twisted.web's C{HTTPChannel} for one request.

    What the request writes waits in C{queue} (C{queued} bytes) until the
    subclass L{take}s it; a streaming producer is paused while more than
    C{high_water} bytes wait and resumed when the subclass says the reader
    has caught up (L{caught_up}); a pull producer is asked for more by
    L{demand}.  Subclasses say where the response goes: L{head_written},
    L{written}, L{request_done}, L{connection_lost}.
    """

    high_water: ClassVar[int] = 256 * 1024
    """Bytes waiting to be read before a streaming producer is paused."""

    factory = None  # twisted.web logs requests through the channel's factory: not here

    def __init__(self, site: Any, peer: Any, host: Any, secure: bool = False) -> None:
        self.site = site
        self.peer = peer
        self.host = host
        self.secure = secure
        self.transport = _Transport(self)
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.finished = False
        """The request has finished writing (C{requestDone})."""
        self.closed = False
        """Writes are no longer wanted (the response broke, or nobody reads it)."""
        self.producer: Any = None
        self.streaming = False
        self.paused = False

    # -- what twisted.web.server.Request calls ----------------------------------

    def getPeer(self) -> Any:
        return self.peer

    def getHost(self) -> Any:
        return self.host

    def isSecure(self) -> bool:
        return self.secure

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        pairs = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in headers.getAllRawHeaders()
            for value in values
        ]
        status = int(code)
        # the resource's own phrase (setResponseCode(code, message)), not Twisted's default
        own = reason != RESPONSES.get(status, b"Unknown Status")
        self.head_written(status, pairs, reason.decode("latin-1") if own else None)

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.queue.append(data)
        self.queued += len(data)
        producer = self.producer
        if producer is not None and self.streaming and self.queued > self.high_water:
            if not self.paused:
                self.paused = True
                producer.pauseProducing()
        self.written()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming, self.paused = producer, bool(streaming), False
        self.written()

    def unregisterProducer(self) -> None:
        self.producer = None

    def requestDone(self, request: Any) -> None:
        self.finished = True
        self.request_done()

    def loseConnection(self) -> None:
        """The resource closed the connection before finishing: the response is broken."""
        if not self.finished:
            self.connection_lost(Failure(ConnectionDone("the app closed the connection")))

    # -- for subclasses ------------------------------------------------------------

    def head_written(self, status: int, pairs: list[tuple[str, str]], reason: str | None) -> None:
        """The status and headers (C{reason}: the resource's own phrase, if it set one)."""
        raise NotImplementedError

    def written(self) -> None:
        """Something was written (or a producer registered): the queue may have grown."""

    def request_done(self) -> None:
        """The request has finished: what is queued is the rest of the body."""

    def connection_lost(self, reason: Failure) -> None:
        """The resource dropped the connection before finishing."""

    def take(self) -> bytes:
        """Everything queued, as one piece of bytes."""
        data = b"".join(self.queue)
        self.queue.clear()
        self.queued = 0
        return data

    def caught_up(self) -> None:
        """The reader has taken what was written: a paused producer resumes."""
        if self.paused and self.producer is not None:
            self.paused = False
            self.producer.resumeProducing()

    def demand(self) -> bool:
        """The reader wants more: ask a pull producer for it.  Whether there was one."""
        producer = self.producer
        if producer is not None and not self.streaming:
            producer.resumeProducing()
            return True
        return False

    def stop_producing(self) -> None:
        """No more is wanted: drop what is queued and stop the producer."""
        self.closed = True
        self.queue.clear()
        self.queued = 0
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
