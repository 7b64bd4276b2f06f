"""
WebSocket upgrades on plugin paths (SPEC §5 C{websocket}), served by autobahn.

The front door calls L{WebSockets.upgrade} after the plugin C{on_request}
hooks.  A request asking to upgrade on a path a plugin's C{websocket}
serves is handed over (L{buntime.web.http1.Exchange.hand_over}) to the
plugin's autobahn protocol, which reads the request head again (as the
hooks left it) and answers the handshake.  Once it is answered the HTTP
request is over: its eliot action ends with the handshake's status (101)
and it no longer counts as in flight, so a shutdown's drain never waits on
a WebSocket.  Open sockets are tracked here instead, and closed with 1001
"going away" when the service stops.
"""

from __future__ import annotations

from typing import Any, cast

from attrs import define, field
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from buntime._logging import log
from buntime.http import Request, Response
from buntime.web.http1 import Exchange, HandedOver

GOING_AWAY = 1001
"""The close code sent to open WebSockets when the runtime stops (RFC 6455 §7.4.1)."""

INTERNAL_ERROR = 1011
"""The close code for a socket whose handler failed in C{onOpen}."""

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


def _with_request_id(result: Any, request_id: str) -> tuple[Any, dict[str, Any]]:
    """An C{onConnect} answer with C{x-request-id} added to the 101's headers."""
    if isinstance(result, tuple):
        protocol = result[0] if result else None
        headers = dict(result[1]) if len(result) > 1 and result[1] else {}
    else:
        protocol, headers = result, {}
    headers["x-request-id"] = request_id
    return protocol, headers


@define(eq=False)
class _Socket:
    """One connection handed to a plugin's WebSocket handler, from handshake to close."""

    protocol: WebSocketServerProtocol
    exchange: Exchange
    request_id: str
    plugin: str
    path: str
    started: float
    status: int | None = None  # the handshake's answer, once the HTTP request ended
    refused: int | None = None
    closed: Deferred[None] = field(factory=Deferred)

    def instrument(self) -> None:
        """
        Wrap the handler's handshake callbacks on this one protocol object:
        autobahn takes a 101's extra headers only from C{onConnect}'s result
        (so C{x-request-id} is added there), writes its refusals itself in
        C{failHandshake} (their status is noted there), and has sent the 101
        when it calls C{onOpen} (the HTTP request ends there, before the
        handler's own C{onOpen} runs, whatever that does).
        """
        protocol = self.protocol
        connect, fail, opened = protocol.onConnect, protocol.failHandshake, protocol.onOpen

        def onConnect(request: Any) -> Deferred[Any]:
            answer = maybeDeferred(connect, request)
            return answer.addCallback(_with_request_id, self.request_id)

        def failHandshake(reason: str, code: int = 400, responseHeaders: Any = None) -> Any:
            self.refused = code
            headers = [*(responseHeaders or []), ("x-request-id", self.request_id)]
            return fail(reason, code, headers)

        def onOpen() -> None:
            self.decided(101)
            try:
                opened()
            except Exception:
                log(
                    "error",
                    "buntime:websocket:handler-failed",
                    f'Plugin "{self.plugin}" WebSocket onOpen failed; closing with 1011',
                    request_id=self.request_id,
                    plugin=self.plugin,
                    traceback=Failure().getTraceback(),
                )
                protocol.sendCloseFrame(INTERNAL_ERROR, b"internal error")

        # Wrapped on this one object, not its class; autobahn also takes a Deferred from onConnect.
        protocol.onConnect = onConnect  # type: ignore[method-assign,assignment]
        protocol.failHandshake = failHandshake  # type: ignore[method-assign]
        protocol.onOpen = onOpen  # type: ignore[method-assign]

    def decided(self, status: int) -> None:
        """The handshake is answered: the HTTP request ends with C{status}."""
        if self.status is None:
            self.status = status
            self.exchange.status = status
            self.exchange.lost(Failure(HandedOver()))

    def lost(self) -> None:
        """The client left before the handshake was answered: the HTTP request was aborted."""
        if self.status is None:
            self.status = self.exchange.status  # logged as is, with aborted=true
            self.exchange.lost(Failure(ConnectionDone()))

    def go_away(self) -> None:
        """Close an open socket with 1001, drop one still in its handshake."""
        state = self.protocol.state
        if state == WebSocketServerProtocol.STATE_OPEN:
            # sendClose() only takes 1000 and 3000-4999; 1001 is the code RFC
            # 6455 gives a server going down, and sendCloseFrame() sends it.
            self.protocol.sendCloseFrame(GOING_AWAY, b"going away")
        elif state != WebSocketServerProtocol.STATE_CLOSING:
            self.abort()

    def abort(self) -> None:
        if self.protocol.state != WebSocketServerProtocol.STATE_CLOSED:
            self.protocol.dropConnection(abort=True)


@define(eq=False)
class WebSockets(Service):
    """
    The open WebSockets of plugins.  Stopping the service refuses new
    upgrades (503), closes open sockets with 1001 "going away", and drops
    those that have not closed after C{grace} seconds.
    """

    clock: IReactorTime
    grace: float = CLOSE_GRACE
    closing: bool = False
    _sockets: set[_Socket] = field(factory=set)

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
            exchange.respond(
                Response.error(
                    503, "SHUTTING_DOWN", "The runtime is shutting down", {"retry-after": "1"}
                )
            )
            return True
        # autobahn leaves its Factory base unparameterized
        protocol = cast("WebSocketServerProtocol | None", factory.buildProtocol(exchange.peer()))
        if protocol is None:
            exchange.respond(Response.error(500, "INTERNAL_ERROR", "No WebSocket handler"))
            return True
        socket = _Socket(
            protocol,
            exchange,
            incoming.request_id or "",
            plugin.name,
            incoming.path,
            self.clock.seconds(),
        )
        socket.instrument()
        self._sockets.add(socket)
        protocol.is_closed.addBoth(lambda _: self._closed(socket))
        exchange.hand_over(protocol, _head(incoming))
        return True

    def _closed(self, socket: _Socket) -> None:
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
                plugin=socket.plugin,
                path=socket.path,
                code=code,
                clean=bool(protocol.wasClean),
                duration_ms=duration,
            )
        socket.closed.callback(None)

    def close_all(self) -> Deferred[None]:
        """
        Refuse new upgrades, close every open socket with 1001, and fire once
        all are closed (dropping those still open after C{grace} seconds).
        """
        self.closing = True
        sockets = list(self._sockets)
        if not sockets:
            return succeed(None)
        log(
            "info",
            "buntime:websocket:closing",
            f"Closing {len(sockets)} WebSocket(s)",
            count=len(sockets),
        )
        waiting = DeferredList([socket.closed for socket in sockets])
        for socket in sockets:
            socket.go_away()
        if waiting.called:
            return succeed(None)
        expiry = self.clock.callLater(self.grace, self._drop, sockets)

        def stop_expiry(_: object) -> None:
            if expiry.active():
                expiry.cancel()

        return waiting.addCallback(stop_expiry)

    def _drop(self, sockets: list[_Socket]) -> None:
        late = [socket for socket in sockets if not socket.closed.called]
        log(
            "warn",
            "buntime:websocket:dropped",
            f"Dropping {len(late)} WebSocket(s) that did not close within {self.grace:g}s",
            count=len(late),
        )
        for socket in late:
            socket.abort()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.close_all()
