"""
Server-Sent Events from a twisted.web request (a plugin's Klein route).

L{EventStream.open} sets the headers, writes a first comment (so the
client sees the answer start at once) and returns the Deferred the route
returns: it fires, ending the answer, on L{EventStream.close}.  L{every}
calls a function every C{interval} seconds and sends what it returns.  The
stream is the request's producer: while the client reads too slowly (its
answer's buffer is full) ticks and keep-alives are skipped, so a client
that stops reading does not grow the runtime.  When the client goes away,
the timer stops and C{on_close} callbacks run, so nothing keeps running for
a client that left::

    @routes.route("/api/sse")
    def sse(self, request):
        stream = EventStream(request, self.clock)
        stream.every(1.0, lambda: json.dumps(self.snapshot()))
        return stream.open()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

KEEPALIVE = 15.0
"""Seconds of silence after which a comment line is sent (proxies drop quiet streams)."""


def event(data: str, name: str | None = None, event_id: str | int | None = None) -> bytes:
    """One event in the text/event-stream format (a multi-line C{data} is split)."""
    lines = [] if name is None else [f"event: {name}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


@implementer(IPushProducer)
@define(eq=False)
class EventStream:
    """
    One client's event stream on C{request}.  C{closed} once the client left
    or L{close} ended it; then sending does nothing.  C{paused} while the
    client's buffer is full: ticks are skipped then (a tick sends what is
    new since the one before, so the next one after it catches up).
    """

    request: Any
    clock: IReactorTime
    closed: bool = False
    paused: bool = False
    on_close: list[Callable[[], object]] = field(factory=list)
    _done: Deferred[None] | None = None
    _ticks: list[tuple[float, Callable[[], str | bytes | None]]] = field(factory=list)
    _loops: list[LoopingCall] = field(factory=list)
    _last_write: float = 0.0

    def every(self, interval: float, tick: Callable[[], str | bytes | None]) -> None:
        """
        Once open, send C{tick()} every C{interval} seconds (at once, then on):
        text is sent as an event's data, bytes as they are, C{None} nothing.
        """
        self._ticks.append((interval, tick))

    def open(self) -> Deferred[None]:
        """Start the answer; the Deferred for the route to return."""
        request = self.request
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        self._done = Deferred(lambda _: self._closed())
        request.notifyFinish().addBoth(self._finished)
        request.registerProducer(self, True)
        self.write(b": open\n\n")
        for interval, tick in self._ticks:
            loop = LoopingCall(self._tick, tick)
            loop.clock = self.clock
            self._loops.append(loop)
            loop.start(interval, now=True).addErrback(self._tick_failed)
        keepalive = LoopingCall(self._keepalive)
        keepalive.clock = self.clock
        self._loops.append(keepalive)
        keepalive.start(KEEPALIVE, now=False)
        return self._done

    def send(self, data: str, name: str | None = None, event_id: str | int | None = None) -> None:
        """Send one event."""
        self.write(event(data, name, event_id))

    def write(self, data: bytes) -> None:
        """Send raw event-stream bytes (nothing once closed)."""
        if not self.closed and data:
            self._last_write = self.clock.seconds()
            self.request.write(data)

    def close(self) -> None:
        """End the answer (the client sees the stream end)."""
        if self.closed:
            return
        done = self._done
        self._closed()
        if done is not None and not done.called:
            done.callback(None)

    def pauseProducing(self) -> None:
        """The client's buffer is full: skip ticks until it has room."""
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        """Nobody reads the answer any more."""
        self._closed()

    def _tick(self, tick: Callable[[], str | bytes | None]) -> None:
        if self.closed or self.paused:
            return
        data = tick()
        if isinstance(data, str):
            self.send(data)
        elif data:
            self.write(data)

    def _keepalive(self) -> None:
        if not self.paused and self.clock.seconds() - self._last_write >= KEEPALIVE:
            self.write(b": keep-alive\n\n")

    def _tick_failed(self, failure: Failure) -> None:
        """A tick raised: the stream cannot go on; log it and end it."""
        _log.failure("An event stream's tick failed; the stream ends", failure)
        self.close()

    def _finished(self, result: object) -> None:
        """The answer ended (written out, or the client went away)."""
        self._closed()
        if isinstance(result, Failure):
            result.trap(Exception)  # the client left: nothing to report

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        request = self.request
        lost = getattr(request, "channel", True) is None  # twisted.web's request once lost
        if getattr(request, "producer", None) is self and not lost:
            request.unregisterProducer()  # before the answer ends (twisted.web wants it so)
        callbacks, self.on_close = self.on_close, []
        for callback in callbacks:
            callback()
