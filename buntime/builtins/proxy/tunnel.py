"""
A WebSocket (any HTTP upgrade) passed through to the upstream of a rule
with C{ws: true}: the request goes upstream as it came (its C{Upgrade} and
C{Connection} kept), and when the upstream switches protocols its 101 goes
to the client as it was written, and the two connections are joined, each
paced by the other (a side that does not read stops the other being read).
An upstream that answers anything else is answered as usual.
"""

from __future__ import annotations

from typing import Any, cast

from httptools import HttpParserUpgrade, HttpResponseParser
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from buntime.builtins.proxy.client import endpoint_to
from buntime.builtins.proxy.forward import link_local_refusal, request_bytes
from buntime.builtins.proxy.rules import Rule, link_local
from buntime.http import Request, Response, Takeover

MAX_HEAD = 64 * 1024
"""The most bytes of an upstream's answer read before the tunnel gives up on it."""


async def tunnel(
    reactor: Any, request: Request, rule: Rule, path: str, timeout: float = 30
) -> Response:
    """
    The upstream's answer to an upgrade request: a 101 whose body
    (L{Takeover}) joins the client's connection to the upstream's, or the
    upstream's refusal, or a 502/504 error.
    """
    endpoint = endpoint_to(reactor, rule.upstream)
    upgrade = ("connection: upgrade", f"upgrade: {request.headers.get('upgrade') or 'websocket'}")
    body = request.body if isinstance(request.body, bytes) else b""
    upstream = _Upstream(request_bytes(request, rule, path, body, upgrade), rule)
    connecting = endpoint.connect(Factory.forProtocol(lambda: upstream))
    timer = reactor.callLater(timeout, upstream.give_up, connecting)
    try:
        await connecting
        return await upstream.answered
    except Exception as error:
        if upstream.answered.called:
            return await upstream.answered  # the timer's 504
        return Response.error(502, "BAD_GATEWAY", f"{rule.target} cannot be reached: {error}")
    finally:
        if timer.active():
            timer.cancel()


class _Upstream(Protocol):
    """The upstream's side: sends the head, reads the answer, then relays to the client."""

    transport: Any

    def __init__(self, head: bytes, rule: Rule) -> None:
        self.head = head
        self.rule = rule
        self.answered: Deferred[Response] = Deferred()
        self.client: _Client | None = None
        self._parser = HttpResponseParser(self)
        self._read = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._complete = False
        self._switched = False
        self.lost = False  # the upstream's connection closed

    def connectionMade(self) -> None:
        peer = str(getattr(self.transport.getPeer(), "host", ""))
        if self.rule.guarded and link_local(peer):  # the SSRF guard: nothing is sent
            refused = link_local_refusal(self.rule, peer)
            self._answer(Response.error(502, "LINK_LOCAL_REFUSED", refused))
            return
        self.transport.write(self.head)

    def give_up(self, connecting: Deferred[Any]) -> None:
        """No answer in time: 504, and the connection (or the connecting) dropped."""
        if self.answered.called:
            return
        self.answered.callback(
            Response.error(504, "GATEWAY_TIMEOUT", "The upstream did not answer the upgrade")
        )
        if self.transport is not None:
            self.transport.abortConnection()
        else:
            connecting.cancel()

    # the answer's head, read by llhttp

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, data: bytes) -> None:
        self._body.append(data)

    def on_message_complete(self) -> None:
        self._complete = True

    def dataReceived(self, data: bytes) -> None:
        if self.client is not None:
            self.client.transport.write(data)
            return
        if self._switched:  # kept for the client, who is being handed over
            self._read += data
            return
        if self.answered.called:
            return
        self._read += data
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._switch()
            return
        except Exception as error:
            self._answer(Response.error(502, "BAD_GATEWAY", f"The upstream's answer: {error}"))
            return
        if self._complete:  # not switched: its answer is the answer
            status = self._parser.get_status_code()
            self._answer(Response(status, self._headers, b"".join(self._body)))
        elif len(self._read) > MAX_HEAD:
            self._answer(Response.error(502, "BAD_GATEWAY", "The upstream's answer is too long"))

    def _switch(self) -> None:
        if self._parser.get_status_code() != 101:
            self._answer(Response.error(502, "BAD_GATEWAY", "The upstream upgraded without a 101"))
            return
        self._switched = True
        self.answered.callback(
            Response(101, self._headers, cast(Any, Takeover(lambda: _Client(self))))
        )

    def take_read(self) -> bytes:
        """The 101 as the upstream wrote it, and what came after it: for the client."""
        read, self._read = bytes(self._read), bytearray()
        return read

    def _answer(self, response: Response) -> None:
        if not self.answered.called:
            self.answered.callback(response)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.lost = True
        if not self.answered.called:
            self.answered.callback(
                Response.error(502, "BAD_GATEWAY", f"The upstream closed: {reason.value}")
            )
        if self.client is not None:
            self.client.transport.loseConnection()


class _Client(Protocol):
    """The client's side once it is handed over: the upstream's 101 first, then both ways."""

    transport: Any

    def __init__(self, upstream: _Upstream) -> None:
        self.upstream = upstream

    def connectionMade(self) -> None:
        upstream = self.upstream
        upstream.client = self
        self.transport.write(upstream.take_read())
        if upstream.lost:  # it closed while its 101 was on its way: nothing more will come
            self.transport.loseConnection()
            return
        # each side stops being read while the other does not take what it is sent
        self.transport.registerProducer(upstream.transport, True)
        upstream.transport.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        self.upstream.transport.write(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.upstream.transport.loseConnection()
