"""
Rendering a twisted.web resource (a plugin's Klein C{routes}) into a
L{buntime.http.Response}, without a socket.

A real C{twisted.web.server.Request} is built on an in-memory channel that
records the status, headers and body the resource writes.  The response is
returned once its headers are written (with a clock: at the end of that
reactor turn); a body complete by then is bytes, one still being written
becomes a stream (so Server-Sent Events work) paced by its reader, and
abandoning the stream tells the resource the client went away.

A form POSTed to a resource is parsed by L{buntime.forms}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from buntime.forms import FormRequest
from buntime.http import Headers, Request, Response, read_body

_HIGH_WATER = 256 * 1024
_DROPPED = frozenset({"content-length", "date", "server", "transfer-encoding", "connection"})


def mount(base: str, resource: IResource) -> Site:
    """A site serving C{resource} at C{base} (one segment, e.g. C{/metrics})."""
    root = Resource()
    root.putChild(base.strip("/").encode("utf-8"), resource)
    site = Site(root)
    site.displayTracebacks = False
    return site


def _address(host_header: str | None, remote: str | None) -> tuple[IPv4Address, IPv4Address]:
    """The client's and the server's addresses, as far as the request tells them."""
    host, port = "127.0.0.1", 80
    if host_header:
        try:
            parsed = urlsplit("//" + host_header)
            host, port = parsed.hostname or host, parsed.port or port
        except ValueError:
            pass
    return IPv4Address("TCP", remote or "127.0.0.1", 0), IPv4Address("TCP", host, port)


class _Channel:
    """Just enough of an C{HTTPChannel} for one request: it records what is written."""

    def __init__(
        self, site: Site, peer: IPv4Address, host: IPv4Address, clock: IReactorTime | None
    ) -> None:
        self.site = site
        self._clock = clock
        self._head: tuple[int, list[tuple[str, str]]] | None = None
        self._start_call: Any = None
        self.factory = None
        self.transport = None
        self.started: Deferred[tuple[int, list[tuple[str, str]]]] = Deferred()
        self.chunks: deque[bytes] = deque()
        self.queued = 0
        self.done = False
        self.producer: Any = None
        self.streaming = True
        self._paused = False
        self._waiter: Deferred[None] | None = None
        self._peer = peer
        self._host = host

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host

    def isSecure(self) -> bool:
        return False

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        pairs = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in headers.getAllRawHeaders()
            for value in values
        ]
        self._head = (int(code), pairs)
        if self._clock is None:
            self._start()
        else:
            # Let a response that finishes in the same turn come out whole (as bytes).
            self._start_call = self._clock.callLater(0, self._start)

    def _start(self) -> None:
        if self._start_call is not None and self._start_call.active():
            self._start_call.cancel()
        if self._head is not None and not self.started.called:
            self.started.callback(self._head)

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.chunks.append(bytes(data))
        self.queued += len(data)
        if self.producer is not None and self.streaming and self.queued > _HIGH_WATER:
            self._paused = True
            self.producer.pauseProducing()
        self._wake()

    def writeSequence(self, data: list[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer, self.streaming = producer, bool(streaming)

    def unregisterProducer(self) -> None:
        self.producer = None

    def requestDone(self, request: Any) -> None:
        self.done = True
        self._start()
        self._wake()

    def loseConnection(self) -> None:
        self.done = True
        self._start()
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def take(self) -> bytes:
        """Everything written so far, resuming a paused producer."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.queued = 0
        if self._paused and self.producer is not None:
            self._paused = False
            self.producer.resumeProducing()
        return data

    def wait(self) -> Deferred[None]:
        """Fires when more is written or the response ends."""
        self._waiter = Deferred()
        if self.producer is not None and not self.streaming:
            self.producer.resumeProducing()
        return self._waiter


async def _stream(channel: _Channel, request: FormRequest) -> AsyncIterator[bytes]:
    try:
        while True:
            if channel.chunks:
                yield channel.take()
                continue
            if channel.done:
                return
            await channel.wait()
    finally:
        if not channel.done:
            channel.done = True
            request.connectionLost(Failure(ConnectionDone("the client went away")))


async def render(site: Site, request: Request, clock: IReactorTime | None = None) -> Response:
    """
    Answer C{request} with the resources of C{site}.  Returns once the status
    and headers are known; the body is bytes when it is complete by then
    (with a C{clock}: by the end of the reactor turn that wrote the headers),
    else a stream.
    """
    peer, host = _address(request.headers.get("host"), request.remote_addr)
    channel = _Channel(site, peer, host, clock)
    web_request = FormRequest(channel)
    for name, value in request.headers.items():
        web_request.requestHeaders.addRawHeader(name, value)
    content = BytesIO(await read_body(request.body))
    content.seek(0, 2)
    web_request.content = content  # type: ignore[assignment]  # twisted.web types it as None
    uri = request.path + ("?" + request.query if request.query else "")
    web_request.requestReceived(request.method.encode("ascii"), uri.encode("latin-1"), b"HTTP/1.0")
    status, pairs = await channel.started
    headers = Headers([(n, v) for n, v in pairs if n.lower() not in _DROPPED])
    if channel.done:
        return Response(status, headers, channel.take())
    return Response(status, headers, _stream(channel, web_request))
