"""
A connection a plugin takes over (a L{buntime.http.Takeover}, the proxy's
tunnel): the plugin's protocol owns it, and the request it answered stays
in flight until it closes (L{TakenOver}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from buntime.web.http1 import Exchange, HandedOver


class TakenOver(Protocol):
    """
    The plugin's C{protocol} on the connection C{exchange} handed over: it
    is told all the connection is told, and once the connection is lost,
    whichever side closed it, the exchange ends (with L{HandedOver}: the
    request is logged with its 101, not as aborted) and C{closed} fires.
    """

    transport: Any

    def __init__(self, protocol: IProtocol, exchange: Exchange) -> None:
        self.protocol = protocol
        self.exchange = exchange
        self.closed: Deferred[None] = Deferred()

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.protocol.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self.protocol.connectionLost(reason)
        finally:
            self.exchange.lost(Failure(HandedOver()))
            self.closed.callback(None)

    def go_away(self) -> None:
        """Close the connection (the runtime stops)."""
        self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection (its close did not complete in time)."""
        self.transport.abortConnection()
