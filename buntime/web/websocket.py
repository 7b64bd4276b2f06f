"""
WebSocket upgrades on plugin paths (SPEC §5 C{websocket}) and to worker
apps, served by autobahn.

The front door calls L{WebSockets.upgrade} after the plugin C{on_request}
hooks.  A request asking to upgrade on a path a plugin's C{websocket}
serves is handed over (L{buntime.web.http1.Exchange.hand_over}) to the
plugin's autobahn protocol, which reads the request head again (as the
hooks left it) and answers the handshake.  Once it is answered the HTTP
request is over: its eliot action ends with the handshake's status (101)
and it no longer counts as in flight, so a shutdown's drain never waits on
a WebSocket.  Open sockets are tracked here instead, and closed with 1001
"going away" when the service stops.

An upgrade no plugin takes goes on like any request; when a worker app
accepts it, the answer is a 101 whose body is a
L{buntime.pool.websocket.WorkerSocket}, and L{WebSockets.relay} hands the
connection to an L{AppSocket} protocol that answers the handshake with
what the app accepted (subprotocol, headers) and relays messages both ways.

A connection a plugin takes over (L{buntime.web.takeover.TakenOver}, the
proxy's tunnel) is tracked here too, but its request stays in flight until
it closes: L{WebSockets.close_tunnels} closes open tunnels when the drain
begins, so that the drain does not wait for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define, field
from autobahn.twisted.websocket import WebSocketServerFactory
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime

from buntime.http import Request, Response
from buntime.logs import log
from buntime.pool.websocket import WorkerSocket
from buntime.web.appsocket import MAX_MESSAGE, PING_INTERVAL, AppSocket, HookedAppSocket
from buntime.web.handshake import HandshakeHooks, TrackedSocket, give_hooks
from buntime.web.http1 import Exchange
from buntime.web.takeover import TakenOver

CLOSE_GRACE = 5.0
"""Seconds open WebSockets get to finish their closing handshake before they are dropped."""


def wants_upgrade(request: Request) -> bool:
    """Whether C{request} asks for C{Upgrade: websocket}."""
    tokens = ",".join(request.headers.get_all("upgrade")).split(",")
    return any(token.strip().lower() == "websocket" for token in tokens)


def _head(request: Request) -> bytes:
    """The request head as the WebSocket protocol reads it: the request as the hooks left it."""
    lines = [f"{request.method} {request.url} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in request.headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_SHUTTING_DOWN = Response.error(
    503, "SHUTTING_DOWN", "The runtime is shutting down", {"retry-after": "1"}
)
"""The answer to an upgrade once the service is stopping."""


@define(eq=False)
class WebSockets(Service):
    """
    The open WebSockets of plugins and apps, and the connections plugins
    took over (tunnels).  Stopping the service refuses new upgrades (503),
    closes open sockets with 1001 "going away", and drops those that have
    not closed after C{grace} seconds.  Tunnels are closed (L{close_tunnels})
    as the drain begins, since their requests are in flight until they close.
    """

    clock: IReactorTime
    grace: float = CLOSE_GRACE
    closing: bool = False
    closing_tunnels: bool = False
    _sockets: set[TrackedSocket] = field(factory=set)
    _tunnels: set[TakenOver] = field(factory=set)
    _relays: WebSocketServerFactory = field(init=False)

    def __attrs_post_init__(self) -> None:
        # the settings of worker apps' WebSockets (each plugin's factory has its own)
        self._relays = WebSocketServerFactory(server=None, reactor=self.clock)
        self._relays.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE,
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_INTERVAL,
            # a client that breaks the rules (a message too big, text not UTF-8)
            # gets a close frame with the reason's code (1009, 1007), as from
            # uvicorn, and the closing handshake; autobahn's default drops it unanswered
            failByDrop=False,
            # autobahn rounds its timers down to the second: 1 s would give a
            # client 0 to 1 s to answer a close before it is cut off
            closeHandshakeTimeout=CLOSE_GRACE,
        )

    @property
    def open(self) -> int:
        """How many sockets are open or in their handshake."""
        return len(self._sockets)

    def upgrade(
        self, exchange: Exchange, incoming: Request, registry: Any, fields: dict[str, Any]
    ) -> bool:
        """
        Hand C{exchange}'s connection to the plugin serving WebSockets at
        C{incoming.path} (the request as the C{on_request} hooks left it)
        when it asks to upgrade.  C{False}: not an upgrade for a plugin,
        answer it as usual.
        """
        if registry is None or not wants_upgrade(incoming):
            return False
        found = registry.websocket_for(incoming.path)
        if found is None:
            return False
        plugin, factory = found
        fields["app"] = f"plugin:{plugin.name}"
        fields["upgrade"] = "websocket"
        if self.closing:
            exchange.respond(_SHUTTING_DOWN)
            return True
        give_hooks(factory)
        # built as the plugin's factory builds it, from its protocol with buntime's hooks
        protocol = factory.buildProtocol(exchange.peer())
        if not isinstance(protocol, HandshakeHooks):
            log(
                "error",
                "buntime:websocket:handler-invalid",
                f"The WebSocket factory of plugin {plugin.name} built {protocol!r},"
                " not an instance of its protocol: a buildProtocol of its own must"
                " build self.protocol",
                request_id=incoming.request_id or "",
                plugin=plugin.name,
            )
            exchange.respond(Response.error(500, "INTERNAL_ERROR", "No WebSocket handler"))
            return True
        self._hand_over(exchange, protocol, incoming, {"plugin": plugin.name})
        return True

    def relay(
        self, exchange: Exchange, request: Request, response: Response, fields: dict[str, Any]
    ) -> None:
        """
        Hand C{exchange}'s connection to the WebSocket a worker app accepted
        for C{request} (C{response}: the app's 101, whose body is the
        L{WorkerSocket}); when that cannot be (the runtime is closing, the
        request was no upgrade), answer the client instead; when the client
        has already left, the app is told so.
        """
        body = response.body
        assert isinstance(body, WorkerSocket)
        fields["upgrade"] = "websocket"
        if self.closing or not exchange.head.upgrade or exchange.gone:
            # the app hears that its client is gone (1006) and its call ends
            ensureDeferred(body.aclose())
            if exchange.gone:  # the client left while the answer was on its way
                return
            if self.closing:
                exchange.respond(_SHUTTING_DOWN)
            else:
                exchange.respond(
                    Response.error(502, "BAD_GATEWAY", "The app switched protocols unasked")
                )
            return
        protocol = HookedAppSocket(body, response.headers)
        protocol.factory = self._relays
        self._hand_over(exchange, protocol, request, {"app": str(fields.get("app", ""))})

    def _hand_over(
        self, exchange: Exchange, protocol: HandshakeHooks, request: Request, owner: dict[str, str]
    ) -> None:
        """Give C{exchange}'s connection to C{protocol}, tracked until it closes."""
        socket = TrackedSocket(
            protocol,
            exchange,
            request.request_id or "",
            owner,
            request.path,
            self.clock.seconds(),
        )
        protocol.buntime_socket = socket
        self._sockets.add(socket)
        protocol.is_closed.addBoth(lambda _: self._closed(socket))
        exchange.hand_over(protocol, _head(request))

    def _closed(self, socket: TrackedSocket) -> None:
        if isinstance(socket.protocol, AppSocket):  # the app hears of it, however it ended
            socket.protocol.ended()
        self._sockets.discard(socket)
        if socket.refused is not None:
            socket.decided(socket.refused)
        elif socket.status is None:
            socket.lost()
        elif socket.status == 101:
            protocol = socket.protocol
            code = protocol.localCloseCode if protocol.closedByMe else protocol.remoteCloseCode
            duration = round((self.clock.seconds() - socket.started) * 1000, 3)
            log(
                "info",
                "buntime:websocket:closed",
                f"WebSocket {socket.path} closed ({code or 'no code'}) after {duration}ms",
                request_id=socket.request_id,
                **socket.owner,
                path=socket.path,
                code=code,
                clean=bool(protocol.wasClean),
                duration_ms=duration,
            )
        socket.closed.callback(None)

    def tunnelled(self, tunnel: TakenOver) -> None:
        """Track C{tunnel} (a connection a plugin took over) until it closes."""
        self._tunnels.add(tunnel)
        tunnel.closed.addBoth(lambda _: self._tunnels.discard(tunnel))

    def close_tunnels(self) -> Deferred[None]:
        """
        Refuse new tunnels (503) and close the open ones, as the drain begins
        (their requests are in flight until they close), and fire once all
        are closed (dropping those still open after C{grace} seconds).
        """
        self.closing_tunnels = True
        return self._close(list(self._tunnels), "tunnel")

    def close_all(self) -> Deferred[None]:
        """
        Refuse new upgrades, close every open socket with 1001, and fire once
        all are closed (dropping those still open after C{grace} seconds).
        """
        self.closing = True
        return self._close(list(self._sockets), "WebSocket")

    def _close(self, sockets: Sequence[TrackedSocket | TakenOver], what: str) -> Deferred[None]:
        if not sockets:
            return succeed(None)
        log(
            "info",
            "buntime:websocket:closing",
            f"Closing {len(sockets)} {what}(s)",
            count=len(sockets),
        )
        waiting = DeferredList([socket.closed for socket in sockets])
        for socket in sockets:
            socket.go_away()
        if waiting.called:
            return succeed(None)
        expiry = self.clock.callLater(self.grace, self._drop, sockets, what)

        def stop_expiry(_: object) -> None:
            if expiry.active():
                expiry.cancel()

        return waiting.addCallback(stop_expiry)

    def _drop(self, sockets: Sequence[TrackedSocket | TakenOver], what: str) -> None:
        late = [socket for socket in sockets if not socket.closed.called]
        log(
            "warn",
            "buntime:websocket:dropped",
            f"Dropping {len(late)} {what}(s) that did not close within {self.grace:g}s",
            count=len(late),
        )
        for socket in late:
            socket.abort()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        closed = DeferredList([self.close_tunnels(), self.close_all()])
        return closed.addCallback(lambda _: None)
