"""
The listening side of the connection layer: an L{HTTP1Connection} per
client, up to C{RUNTIME_MAX_CONNECTIONS} (past it, 503 and closed), and
L{Handler}, what a connection asks of the front door.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IProtocolNegotiationFactory, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory
from zope.interface import classImplements

from buntime.logs import log
from buntime.web.http1.connection import HTTP1Connection
from buntime.web.http1.exchange import Exchange
from buntime.web.http1.head import Refusal, request_id_for
from buntime.web.http1.limits import Limits
from buntime.web.http1.response import (
    refusal_bytes,
)


class Handler(TypingProtocol):
    """What a connection asks of the front door."""

    def answer(self, exchange: Exchange) -> None:
        """Answer C{exchange} (through C{exchange.respond} or C{exchange.hand_over})."""

    def body_limit(self, path: str) -> int:
        """The most bytes of request body taken for C{path}."""


class HTTP1Factory(ServerFactory):
    """
    Builds an L{HTTP1Connection} per client for C{handler}; past
    C{limits.max_connections} open connections, a new one gets 503 and is
    closed.  C{state} (a L{buntime.web.state.RuntimeState}) counts request
    bodies still arriving as in flight.

    Behind C{--listen ssl:...} it offers C{http/1.1} over ALPN where Twisted
    asks for it (L{offers_alpn}).
    """

    noisy = False

    def __init__(
        self, handler: Handler, clock: IReactorTime, limits: Limits | None = None, state: Any = None
    ) -> None:
        self.handler = handler
        self.clock = clock
        self.limits = limits or Limits()
        self.state = state
        self.connections = 0
        self._warned = float("-inf")

    def buildProtocol(self, addr: Any) -> Protocol:
        if self.connections >= self.limits.max_connections:
            now = self.clock.seconds()
            if now - self._warned >= 1.0:
                self._warned = now
                log(
                    "warn",
                    "buntime:http:too-many-connections",
                    f"Refusing connections past RUNTIME_MAX_CONNECTIONS "
                    f"({self.limits.max_connections}) with 503",
                    limit=self.limits.max_connections,
                )
            return _Busy(self.clock)
        self.connections += 1
        return HTTP1Connection(self)

    def connection_closed(self) -> None:
        self.connections -= 1

    def acceptableProtocols(self) -> list[bytes]:
        """The one protocol a TLS client may choose over ALPN: HTTP/1.1."""
        return [b"http/1.1"]


def offers_alpn() -> bool:
    """
    Whether L{HTTP1Factory} offers ALPN protocols to Twisted's TLS: where
    Twisted sets the ALPN callback once per TLS context and asks the factory
    on each handshake (Twisted 26).  There, a factory offering none makes a
    client that offers ALPN (browsers, curl) get an C{internal error} alert
    instead of a handshake.  Older releases (25.5) set the protocols on the
    shared context for each connection instead, which pyOpenSSL 25 and later
    refuse (every handshake fails), and without protocols set no callback at
    all (every client is served, without ALPN).
    """
    from twisted.internet import _sslverify

    return hasattr(_sslverify, "setupForALPN")


if offers_alpn():
    classImplements(HTTP1Factory, IProtocolNegotiationFactory)


class _Busy(Protocol):
    """A connection past the limit: 503, then closed."""

    transport: Any

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def connectionMade(self) -> None:
        refusal = Refusal(503, "Too many connections")
        now = self._clock.seconds()
        self.transport.write(
            refusal_bytes(refusal, now, request_id_for(None), b"retry-after: 1\r\n")
        )
        self.transport.loseConnection()
