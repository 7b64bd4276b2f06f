"""
WebSocket upgrades on plugin paths (SPEC §5 C{websocket}), served by autobahn.

The front door calls L{WebSockets.upgrade} after the plugin C{on_request}
hooks.  A request asking to upgrade on a path a plugin's C{websocket}
serves is handed to autobahn's C{WebSocketResource}, which takes over its
connection.  From then on the HTTP request is over: its eliot action ends
with the handshake's status (101) and it no longer counts as in flight, so
a shutdown's drain never waits on a WebSocket.  Open sockets are tracked
here instead, and closed with 1001 "going away" when the service stops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from attrs import define, field
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers as TwistedHeaders

from buntime._logging import log
from buntime.http import Request, Response

GOING_AWAY = 1001
"""The close code sent to open WebSockets when the runtime stops (RFC 6455 §7.4.1)."""

INTERNAL_ERROR = 1011
"""The close code for a socket whose handler failed in C{onOpen}."""

CLOSE_GRACE = 5.0
"""Seconds open WebSockets get to finish their closing handshake before they are dropped."""


class HandedOver(Exception):
    """The HTTP request's connection now belongs to a WebSocket protocol (not a disconnect)."""


def handed_over(reason: object) -> bool:
    """Whether a request's C{notifyFinish} failure means "upgraded", not "client gone"."""
    return isinstance(reason, Failure) and reason.check(HandedOver) is not None


def wants_upgrade(request: Any) -> bool:
    """Whether a twisted.web request asks for C{Upgrade: websocket}."""
    tokens = (request.getHeader(b"upgrade") or b"").split(b",")
    return any(token.strip().lower() == b"websocket" for token in tokens)


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
    request: Any
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
            self.request.setResponseCode(status)
            self.request.connectionLost(Failure(HandedOver()))

    def lost(self) -> None:
        """The client left before the handshake was answered: the HTTP request was aborted."""
        if self.status is None:
            self.status = self.request.code  # logged as is, with aborted=true
            self.request.connectionLost(Failure(ConnectionDone()))

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
class _Handing:
    """The factory C{WebSocketResource} asks for a protocol: the plugin's, instrumented."""

    factory: WebSocketServerFactory
    track: Callable[[WebSocketServerProtocol], None]

    def buildProtocol(self, addr: IAddress) -> WebSocketServerProtocol | None:
        # It builds the factory's protocol class; autobahn leaves its Factory base unparameterized.
        protocol = cast("WebSocketServerProtocol | None", self.factory.buildProtocol(addr))
        if protocol is not None:
            self.track(protocol)
        return protocol


def _write(request: Any, response: Response) -> None:
    """Write a whole-bodied C{response} to a twisted.web request and finish it."""
    request.setResponseCode(response.status)
    for name, value in response.headers.items():
        request.responseHeaders.addRawHeader(name, value)
    if isinstance(response.body, bytes) and response.body:
        request.write(response.body)
    request.finish()


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
        self, request: Any, incoming: Request, registry: Any, fields: dict[str, Any]
    ) -> bool:
        """
        Hand C{request} to the plugin serving WebSockets at C{incoming.path}
        (the request as the C{on_request} hooks left it) when it asks to
        upgrade.  C{False}: not an upgrade for a plugin, answer it as usual.
        """
        if registry is None or not wants_upgrade(request):
            return False
        found = registry.websocket_for(incoming.path)
        if found is None:
            return False
        plugin, factory = found
        fields["app"] = f"plugin:{plugin.name}"
        fields["upgrade"] = "websocket"
        if self.closing:
            _write(
                request,
                Response.error(
                    503, "SHUTTING_DOWN", "The runtime is shutting down", {"retry-after": "1"}
                ),
            )
            return True
        # The handler sees the request as the hooks left it, with its x-request-id.
        headers = TwistedHeaders()
        for name, value in incoming.headers.items():
            headers.addRawHeader(name, value)
        request.requestHeaders = headers
        request.uri = incoming.url.encode("latin-1")
        sockets: list[_Socket] = []

        def track(protocol: WebSocketServerProtocol) -> None:
            socket = _Socket(
                protocol,
                request,
                incoming.request_id or "",
                plugin.name,
                incoming.path,
                self.clock.seconds(),
            )
            socket.instrument()
            self._sockets.add(socket)
            sockets.append(socket)

        result = WebSocketResource(_Handing(factory, track)).render(request)
        if isinstance(result, bytes):  # no protocol (500), or no transport to take (426)
            if sockets:
                self._sockets.discard(sockets[0])
            request.write(result)
            request.finish()
            return True
        socket = sockets[0]
        socket.protocol.is_closed.addBoth(lambda _: self._closed(socket))
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
