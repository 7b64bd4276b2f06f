"""
Rendering a twisted.web resource (a plugin's Klein C{routes}) into a
L{buntime.http.Response}, without a socket.

A real C{twisted.web.server.Request} is built on an in-memory channel that
records the status, headers and body the resource writes.  The response is
returned once its headers are written (with a clock: at the end of that
reactor turn); a body complete by then is bytes, one still being written
becomes a stream (so Server-Sent Events work) paced by its reader, and
abandoning the stream tells the resource the client went away.  An answer
to C{HEAD} has the body a C{GET} would (L{buntime.forms.FormRequest}), or
the resource's C{content-length}: the connection sends that length, no body.

A form POSTed to a resource is parsed by L{buntime.forms}.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from buntime.forms import FormRequest
from buntime.http import Headers, Request, Response, read_body
from buntime.logs import log
from buntime.memchannel import MemoryChannel
from buntime.stream import PushedStream

_DROPPED = frozenset({"date", "server", "transfer-encoding", "connection"})
"""Headers the connection writes itself.  A C{content-length} is kept: a HEAD answer says it."""


def _error_bytes(status: int, code: str, message: str) -> bytes:
    body = Response.error(status, code, message).body
    assert isinstance(body, bytes)  # Response.error's JSON
    return body


class PluginSite(Site):
    """The site of one plugin's routes: it knows whose they are, for its errors."""

    def __init__(self, resource: IResource, plugin: str) -> None:
        super().__init__(resource)
        self.plugin = plugin
        self.displayTracebacks = False


class _RouteRequest(FormRequest):
    """
    A request to a plugin's route: a malformed form gets buntime's JSON
    error, and so does a route that raises.
    """

    bad_form = (
        b"application/json",
        _error_bytes(400, "BAD_REQUEST", "The multipart body is malformed"),
    )

    def processingFailed(self, reason: Failure) -> Failure:
        """
        A route that raised (Klein hands its failure here): logged with its
        traceback, in the request's task, and answered 500 C{PLUGIN_ERROR}
        as JSON (twisted.web's would be an HTML page, logged without a
        message); an answer already begun just ends.
        """
        plugin = getattr(getattr(self, "site", None), "plugin", "?")
        method = (self.method or b"").decode("latin-1")
        path = (self.path or b"").decode("latin-1")
        error = f"{reason.type.__name__}: {reason.getErrorMessage()}"
        log(
            "error",
            "buntime:plugins:route-failed",
            f'Plugin "{plugin}" route {method} {path} failed: {error}',
            plugin=plugin,
            method=method,
            path=path,
            traceback=reason.getTraceback(),
        )
        if not self.startedWriting:
            body = _error_bytes(
                500, "PLUGIN_ERROR", f'Plugin "{plugin}" failed to handle the request'
            )
            self.setResponseCode(500)
            self.setHeader(b"content-type", b"application/json")
            self.setHeader(b"content-length", b"%d" % len(body))
            self.write(body)
        if not self.finished:
            self.finish()
        return reason


def mount(base: str, resource: IResource, plugin: str = "?") -> PluginSite:
    """A site serving C{resource} at C{base} (one segment, e.g. C{/metrics}) for C{plugin}."""
    root = Resource()
    root.putChild(base.strip("/").encode("utf-8"), resource)
    return PluginSite(root, plugin)


UNKNOWN_PEER = "0.0.0.0"
"""The client address a resource sees when the runtime knows none (never this machine's)."""


def _address(host_header: str | None, remote: str | None) -> tuple[IPv4Address, IPv4Address]:
    """
    The client's and the server's addresses, as far as the request tells
    them: the client's exactly (a route's trust rule reads it), the server's
    from C{Host}.
    """
    host, port = "127.0.0.1", 80
    if host_header:
        try:
            parsed = urlsplit("//" + host_header)
            host, port = parsed.hostname or host, parsed.port or port
        except ValueError:
            pass
    return IPv4Address("TCP", remote or UNKNOWN_PEER, 0), IPv4Address("TCP", host, port)


class _Channel(MemoryChannel):
    """
    The channel of one rendered request: what is written waits until the
    status and headers are out, then goes to the response's L{PushedStream},
    each chunk acked when its reader takes it (which paces a producer).
    """

    def __init__(
        self, site: Site, peer: IPv4Address, host: IPv4Address, clock: IReactorTime | None
    ) -> None:
        super().__init__(site, peer, host)
        self._clock = clock
        self._head: tuple[int, list[tuple[str, str]]] | None = None
        self._start_call: Any = None
        self.started: Deferred[tuple[int, list[tuple[str, str]]]] = Deferred()
        self.stream: PushedStream | None = None

    def head_written(self, status: int, pairs: list[tuple[str, str]], reason: str | None) -> None:
        self._head = (status, pairs)
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

    def written(self) -> None:
        if self.stream is not None:
            self._send(self.stream)
        elif not self.queued:
            self.demand()  # a pull producer's first piece brings the status and headers

    def request_done(self) -> None:
        self._start()
        if self.stream is not None:
            self._send(self.stream)

    def connection_lost(self, reason: Failure) -> None:
        # The resource closed the connection: its response ends with what it wrote.
        self.requestDone(None)

    def streamed(self, request: FormRequest) -> PushedStream:
        """The rest of the body, as it is written; abandoning it tells C{request}."""
        stream = self.stream = PushedStream(lambda: self._abandoned(request))
        self._send(stream)
        return stream

    def _send(self, stream: PushedStream) -> None:
        queue = self.queue
        while queue:
            data = queue.popleft()
            ack: Deferred[object] = Deferred()
            ack.addCallback(self._taken, len(data))
            stream.feed(bytes(data), ack)
        if self.finished:
            stream.end()
        elif not self.queued:
            self.demand()

    def _taken(self, _: object, size: int) -> None:
        if self.stream is None or self.stream.closed:
            return  # nobody reads any more: the producer is not asked for more
        self.queued -= size
        if not self.queued:
            self.caught_up()
            self.demand()

    def _abandoned(self, request: FormRequest) -> None:
        self.closed = True
        if not self.finished:
            request.connectionLost(Failure(ConnectionDone("the client went away")))


async def render(site: Site, request: Request, clock: IReactorTime | None = None) -> Response:
    """
    Answer C{request} with the resources of C{site}.  Returns once the status
    and headers are known; the body is bytes when it is complete by then
    (with a C{clock}: by the end of the reactor turn that wrote the headers),
    else a stream.
    """
    try:  # Klein routes the percent-decoded path as UTF-8 (else a plain-text 400, a traceback)
        unquote_to_bytes(request.path).decode("utf-8")
    except UnicodeDecodeError:
        return Response.error(400, "BAD_REQUEST", "The request path is not UTF-8 once decoded")
    peer, host = _address(request.headers.get("host"), request.remote_addr)
    channel = _Channel(site, peer, host, clock)
    web_request = _RouteRequest(channel)
    for name, value in request.headers.items():
        web_request.requestHeaders.addRawHeader(name, value)
    content = BytesIO(await read_body(request.body))
    content.seek(0, 2)
    web_request.content = content  # type: ignore[assignment]  # twisted.web types it as None
    uri = request.path + ("?" + request.query if request.query else "")
    web_request.requestReceived(request.method.encode("ascii"), uri.encode("latin-1"), b"HTTP/1.0")
    status, pairs = await channel.started
    headers = Headers([(n, v) for n, v in pairs if n.lower() not in _DROPPED])
    if channel.finished:
        return Response(status, headers, channel.take())
    return Response(status, headers, channel.streamed(web_request))
