"""
The connection layer (L{buntime.web.http1}) seen from its two sides, with
no sockets: a fake front door (L{Door}) that records each exchange and
answers it, and a client (L{Client}) that writes bytes into a connection
over a L{StringTransportWithDisconnection} and reads the answers back with
h11.  Time is a L{Clock}: whole answers go out at the end of the reactor
turn (L{buntime._turn.EndOfTurn}), so reading advances it by 0.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import h11
from attrs import define, frozen
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransportWithDisconnection

from buntime.http import Response
from buntime.web.http1 import Exchange, HTTP1Connection, HTTP1Factory, Limits
from buntime.web.state import RuntimeState

Reply = Callable[[Exchange], Response | None]


def echo(exchange: Exchange) -> Response:
    """The door's usual answer: what it saw of the request (method, target, body)."""
    head = exchange.head
    seen = b"%s %s:%s" % (head.method.encode(), head.target.encode(), exchange.body)
    return Response(200, {"content-type": "text/plain"}, seen)


def holding(*paths: str) -> Reply:
    """Leave the requests for C{paths} unanswered (the test answers them), echo the rest."""
    return lambda exchange: None if exchange.head.path in paths else echo(exchange)


def always(response: Response) -> Reply:
    return lambda exchange: response


class Door:
    """
    The front door (L{buntime.web.http1.connection.Handler}): C{seen} holds
    every exchange it was given, in order; C{reply} answers each at once
    (C{None}: left for the test to answer).
    """

    def __init__(self, reply: Reply = echo, limit: int = 1000) -> None:
        self.reply = reply
        self.limit = limit
        self.seen: list[Exchange] = []

    def body_limit(self, path: str) -> int:
        return self.limit

    def answer(self, exchange: Exchange) -> None:
        self.seen.append(exchange)
        exchange.request_id = f"rid-{len(self.seen)}"
        response = self.reply(exchange)
        if response is not None:
            exchange.respond(response)

    @property
    def paths(self) -> list[str]:
        return [exchange.head.path for exchange in self.seen]


class Stream:
    """
    A streamed body the test feeds chunk by chunk (L{give}); C{closed} once
    the runtime closes it (C{aclose}).
    """

    def __init__(self) -> None:
        self._given: list[bytes | None] = []
        self._waiter: Deferred[None] | None = None
        self.closed = False

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        if not self._given:
            self._waiter = Deferred()
            await self._waiter
        chunk = self._given.pop(0)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def aclose(self) -> None:
        self.closed = True

    def give(self, chunk: bytes | None) -> None:
        """Produce C{chunk} (C{None}: the end of the body)."""
        self._given.append(chunk)
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)


class Transport(StringTransportWithDisconnection):
    """Closing calls the protocol's C{connectionLost}; C{aborted} tells an abort from a close."""

    aborted = False

    def __init__(self) -> None:
        super().__init__(lenient=True)

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class BufferingTransport(Transport):
    """
    A transport for a peer that never reads: past C{room} bytes written,
    it pauses its producer, as a TCP transport does when its buffer fills.
    """

    room = 64 * 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > self.room and self.producer is not None:
            self.producer.pauseProducing()


class Lingering(Transport):
    """A transport whose close waits for the peer to take what was written (it never does)."""

    def loseConnection(self) -> None:
        self.disconnecting = True


@frozen
class Answer:
    """One answer as h11 reads it; C{complete} is false for a body cut short by the close."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    complete: bool = True

    @property
    def error(self) -> dict[str, str]:
        """The C{error} object of a JSON error body."""
        return json.loads(self.body)["error"]


def read_answers(data: bytes, closed: bool, methods: Iterable[str] = ()) -> list[Answer]:
    """
    The answers in C{data}, interim ones included, read by an h11 client that
    sent one request per answer (C{methods} in turn, then GETs); C{closed}:
    the server closed the connection after C{data}.
    """
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    if closed:
        client.receive_data(b"")
    asked = iter(methods)
    found: list[Answer] = []
    while True:
        client.send(h11.Request(method=next(asked, "GET"), target="/", headers=[("host", "a")]))
        client.send(h11.EndOfMessage())
        response, body = None, []
        try:
            while not isinstance(event := client.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                    return found
                if isinstance(event, h11.InformationalResponse):
                    found.append(Answer(event.status_code, _headers(event)))
                elif isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    body.append(event.data)
        except h11.RemoteProtocolError:
            if response is not None:
                found.append(
                    Answer(response.status_code, _headers(response), b"".join(body), False)
                )
            return found
        assert response is not None
        found.append(Answer(response.status_code, _headers(response), b"".join(body)))
        if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
            return found
        client.start_next_cycle()


def _headers(event: h11.Response | h11.InformationalResponse) -> dict[str, str]:
    return {name.decode(): value.decode("latin-1") for name, value in event.headers}


@define
class Client:
    """One client on one connection."""

    factory: HTTP1Factory
    connection: HTTP1Connection
    transport: Transport

    @property
    def clock(self) -> Clock:
        return self.factory.clock

    @property
    def door(self) -> Door:
        return self.factory.handler

    @property
    def state(self) -> RuntimeState:
        return self.factory.state

    @property
    def closed(self) -> bool:
        return not self.transport.connected

    def send(self, *data: bytes) -> None:
        """Each of C{data} arrives in a read of its own."""
        for chunk in data:
            self.transport.protocol.dataReceived(chunk)

    def received(self) -> bytes:
        """All the client was sent by the end of this reactor turn."""
        self.clock.advance(0)
        return self.transport.value()

    def answers(self, *methods: str) -> list[Answer]:
        """The answers received, requests made with C{methods} (then GETs)."""
        return read_answers(self.received(), self.closed, methods)

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)


def serve(door: Door | None = None, limits: Limits | None = None) -> HTTP1Factory:
    return HTTP1Factory(door or Door(), Clock(), limits or Limits(), RuntimeState())


def connect(
    door: Door | None = None,
    limits: Limits | None = None,
    factory: HTTP1Factory | None = None,
    transport: Transport | None = None,
) -> Client:
    """A new client connection (of C{factory}, or of a new one for C{door} and C{limits})."""
    factory = factory or serve(door, limits)
    connection = factory.buildProtocol(None)
    transport = transport or Transport()
    transport.protocol = connection
    connection.makeConnection(transport)
    return Client(factory, connection, transport)


def get(path: bytes = b"/", *lines: bytes, method: bytes = b"GET") -> bytes:
    """A request without a body, with C{Host: a} and C{lines}."""
    return b"%s %s HTTP/1.1\r\nHost: a\r\n%s\r\n" % (method, path, _lines(lines))


def post(path: bytes, body: bytes, *lines: bytes) -> bytes:
    """A request with a C{Content-Length} body."""
    return b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n%s\r\n%s" % (
        path,
        len(body),
        _lines(lines),
        body,
    )


def _lines(lines: Iterable[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)
