"""
Klein apps and twisted.web resources, rendered against an in-memory
twisted.web request: a real L{twisted.web.server.Request} whose channel
(a L{buntime.memchannel.MemoryChannel}) hands the response to the worker's
L{ResponseWriter} instead of a socket.

The app's base is the request's C{prepath} (so C{prePathURL()}, Klein's
C{url_for} and session cookies point at the right place) and the path
inside the app its C{postpath}.  Writes made in one reactor turn are sent
together, so a resource that writes and finishes at once answers in one
piece; C{NOT_DONE_YET}, later writes and producers stream, paced by the
runtime.  An unhandled error becomes a C{ResponseError}, not a 500 page.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from buntime.forms import FormRequest
from buntime.memchannel import MemoryChannel
from buntime.pool.child.adapter import IAdapter
from buntime.pool.child.request import IncomingRequest
from buntime.pool.child.writer import ResponseWriter
from buntime.pool.commands import CHUNK_SIZE

HIGH_WATER = 4 * CHUNK_SIZE
"""Bytes queued before a streaming producer is paused."""


def is_klein(app: object) -> bool:
    """Whether C{app} is a C{klein.Klein} (without importing Klein, which imports a reactor)."""
    return any(
        cls.__module__.startswith("klein") and cls.__name__ == "Klein" for cls in type(app).__mro__
    )


def _address(host: str, port: int) -> IPv4Address | IPv6Address:
    if ":" in host:
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host or "127.0.0.1", port)


class _Request(FormRequest):
    """A twisted.web request whose response goes to the worker's writer."""

    channel: _Channel | None  # type: ignore[assignment]  # twisted.web types it HTTPChannel
    sitepath: list[bytes]  # set by the site; twisted.web does not declare it
    base_depth = 0

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # twisted.web frames a length-less HTTP/1.1 body as chunked; the runtime frames it.
            version, self.clientproto = self.clientproto, b"HTTP/1.0"
            try:
                super().write(data)
            finally:
                self.clientproto = version
        else:
            super().write(data)

    def processingFailed(self, reason: Failure) -> None:
        channel = self.channel
        if channel is not None:
            channel.app_failed(reason)


class _Site(server.Site):
    """Moves the app's base from C{postpath} to C{prepath} before traversal."""

    def getResourceFor(self, request: _Request) -> Any:
        # process() has just set twisted.web's Server and Date: the runtime sets its own.
        request.responseHeaders.removeHeader(b"server")
        request.responseHeaders.removeHeader(b"date")
        depth = request.base_depth
        assert request.postpath is not None  # process() has set it
        request.prepath, request.postpath = request.postpath[:depth], request.postpath[depth:]
        request.site = self
        request.sitepath = list(request.prepath)
        return resource.getChildForRequest(self.resource, request)


class _Channel(MemoryChannel):
    """The connection one request writes to, feeding C{writer} in order."""

    high_water = HIGH_WATER

    def __init__(
        self, site: _Site, writer: ResponseWriter, reactor: Any, peer: Any, host: Any, secure: bool
    ) -> None:
        super().__init__(site, peer, host, secure)
        self.writer = writer
        self.reactor = reactor
        self.done: Deferred = Deferred(self._cancel)
        self.request: _Request | None = None
        self._busy = False
        self._scheduled = False

    # -- what the request writes -----------------------------------------------

    def head_written(self, status: int, pairs: list[tuple[str, str]], reason: str | None) -> None:
        self.writer.start(status, pairs, reason)

    def written(self) -> None:
        self._schedule()

    def request_done(self) -> None:
        self._schedule()

    def connection_lost(self, reason: Failure) -> None:
        self.app_failed(reason)

    # -- failures and cancels -------------------------------------------------

    def app_failed(self, reason: Failure) -> None:
        """The app raised: the request is over, the protocol reports it."""
        self._stop(reason)
        if not self.done.called:
            self.done.errback(reason)

    def _cancel(self, _: Deferred) -> None:
        self._stop(Failure(ConnectionDone("the request was cancelled")))

    def _stop(self, reason: Failure) -> None:
        self.stop_producing()
        request, self.request = self.request, None
        if request is not None and not request.finished:
            request.connectionLost(reason)

    # -- pumping the queue into the writer -------------------------------------

    def _schedule(self) -> None:
        if not self._scheduled and not self._busy:
            self._scheduled = True
            self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        if self._busy or self.done.called:
            return
        data = self.take()
        if self.finished:
            self._busy = True
            self.writer.end(data).addCallbacks(self._ended, self._send_failed)
        elif data:
            self._busy = True
            self.writer.write(data).addCallbacks(self._sent, self._send_failed)
        else:
            self.demand()

    def _sent(self, _: object) -> None:
        self._busy = False
        self.caught_up()
        if self.queue or self.finished or (self.producer is not None and not self.streaming):
            self._schedule()

    def _ended(self, _: object) -> None:
        self.closed = True
        self.request = None
        if not self.done.called:
            self.done.callback(None)

    def _send_failed(self, reason: Failure) -> None:
        self._busy = False
        self._stop(reason)
        if not self.done.called:
            self.done.errback(reason)


@implementer(IAdapter)
@define(eq=False)
class WebAdapter:
    """Renders C{root} (a twisted.web resource; a Klein app's C{.resource()}) per request."""

    root: Any
    reactor: Any
    kind: str = "resource"
    _site: _Site = field(init=False)

    @classmethod
    def for_app(cls, app: Any, reactor: Any) -> WebAdapter:
        """The adapter for a Klein app or an C{IResource} provider."""
        if is_klein(app):
            return cls(app.resource(), reactor, kind="klein")
        return cls(app, reactor)

    def __attrs_post_init__(self) -> None:
        self._site = _Site(self.root, reactor=self.reactor)

    def startup(self) -> Deferred:
        return succeed(None)

    def shutdown(self) -> Deferred:
        return succeed(None)

    def handle(self, request: IncomingRequest, writer: ResponseWriter) -> Deferred:
        server_port = request.server[1]
        client = request.client or ("127.0.0.1", 0)
        channel = _Channel(
            self._site,
            writer,
            self.reactor,
            peer=_address(*client),
            host=_address("127.0.0.1", server_port),
            secure=request.scheme == "https",
        )
        body = request.body.read_all()
        body.addCallback(self._render, request, channel)
        body.addErrback(channel.app_failed)
        return channel.done

    def _render(self, body: bytes, request: IncomingRequest, channel: _Channel) -> None:
        twisted_request = _Request(channel)
        twisted_request.base_depth = len([part for part in request.base.split("/") if part])
        for name, value in request.headers:
            twisted_request.requestHeaders.addRawHeader(
                name.encode("latin-1"), value.encode("latin-1")
            )
        twisted_request.gotLength(len(body))
        twisted_request.handleContentChunk(body)
        channel.request = twisted_request
        path = request.target if request.target.startswith("/") else "/" + request.target
        target = request.base.rstrip("/") + path
        twisted_request.requestReceived(
            request.method.encode("latin-1"), target.encode("utf-8"), b"HTTP/1.1"
        )
