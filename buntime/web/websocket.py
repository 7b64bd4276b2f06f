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
connection to an L{_AppSocket} protocol that answers the handshake with
what the app accepted (subprotocol, headers) and relays messages both ways.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

from attrs import define, field
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from buntime.http import Headers, Request, Response
from buntime.logs import log
from buntime.once import Once
from buntime.pool.stream import fit_text
from buntime.pool.websocket import WorkerSocket
from buntime.web.http1 import Exchange, HandedOver

GOING_AWAY = 1001
"""The close code sent to open WebSockets when the runtime stops (RFC 6455 §7.4.1)."""

INTERNAL_ERROR = 1011
"""The close code for a socket whose handler failed in C{onOpen}."""

PROTOCOL_ERROR, NO_STATUS, GONE = 1002, 1005, 1006
"""
What an app hears of a client's close frame with a code no frame may carry,
of one without a code, and of a client gone without any close frame.
"""

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
    """
    One connection handed to a WebSocket protocol, from handshake to close;
    C{owner} names who serves it in log messages (C{plugin} or C{app}).
    """

    protocol: WebSocketServerProtocol
    exchange: Exchange
    request_id: str
    owner: dict[str, str]
    path: str
    started: float
    status: int | None = None  # the handshake's answer, once the HTTP request ended
    refused: int | None = None
    closed: Deferred[None] = field(factory=Deferred)

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


_P = TypeVar("_P", bound=WebSocketServerProtocol)


class _Hooks(WebSocketServerProtocol):
    """
    buntime's part of every WebSocket handshake, in overrides of autobahn's
    own callbacks (as its users write them) around the handler's: autobahn
    takes a 101's extra headers only from C{onConnect}'s result (so
    C{x-request-id} is added there), writes its refusals itself in
    C{failHandshake} (their status is noted there), and has sent the 101
    when it calls C{onOpen} (the HTTP request ends there, before the
    handler's own C{onOpen} runs, whatever that does).
    """

    buntime_socket: _Socket  # set before the connection is handed over

    def onConnect(self, request: Any) -> Deferred[Any]:  # type: ignore[override]
        answer = maybeDeferred(super().onConnect, request)
        return answer.addCallback(_with_request_id, self.buntime_socket.request_id)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> Any:
        self.buntime_socket.refused = code
        headers = [*(responseHeaders or []), ("x-request-id", self.buntime_socket.request_id)]
        return super().failHandshake(reason, code, headers)

    def onOpen(self) -> None:
        socket = self.buntime_socket
        socket.decided(101)
        try:
            super().onOpen()
        except Exception:
            log(
                "error",
                "buntime:websocket:handler-failed",
                f"WebSocket onOpen of {socket.owner} failed; closing with 1011",
                request_id=socket.request_id,
                **socket.owner,
                traceback=Failure().getTraceback(),
            )
            self.sendCloseFrame(INTERNAL_ERROR, b"internal error")


def _hooked(cls: type[_P]) -> type[_P]:
    """
    A new subclass of C{cls} (a plugin handler's protocol class) that adds
    L{_Hooks}.  One is made per connection and goes with it: a cache would
    keep a reloaded plugin's classes alive.
    """
    return type(cls.__name__, (_Hooks, cls), {"__module__": cls.__module__})


_NOT_FORWARDED = frozenset(
    {
        "connection",
        "content-length",
        "sec-websocket-accept",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "transfer-encoding",
        "upgrade",
        "x-request-id",
    }
)
"""Headers of an app's 101 the handshake writes itself (or must not carry)."""

MAX_MESSAGE = 16 * 1024 * 1024
"""The largest message a client may send to an app (uvicorn's C{ws_max_size})."""

PING_INTERVAL = 20.0
"""Seconds between pings to a client of an app's WebSocket; as long again for its pong."""

RELAY_HIGH_WATER = 1024 * 1024
"""Bytes of client messages the app has not taken yet before the client is read no more."""


def _sendable(code: int) -> bool:
    """Whether a close frame may carry C{code} (RFC 6455 §7.4)."""
    return code in WebSocketServerProtocol.CLOSE_STATUS_CODES_ALLOWED or 3000 <= code <= 4999


class _AppSocket(WebSocketServerProtocol):
    """
    The client's side of a WebSocket a worker app accepted: answers the
    handshake with the app's subprotocol and headers, then relays messages
    (the L{buntime.pool.websocket.ISocketPeer} of its L{WorkerSocket}).
    Reading from the client pauses while the app is behind by more than
    L{RELAY_HIGH_WATER} bytes; the app's sends wait while the client's
    socket buffer is full.
    """

    def __init__(self, socket: WorkerSocket, accepted: Headers) -> None:
        super().__init__()
        self._socket = socket
        self._accepted = accepted
        self._behind = 0
        self._reading_paused = False
        self._writing_paused = False
        self._room: Once | None = None

    # autobahn writes each value of a list as its own header line (Set-Cookie twice, say)
    def onConnect(self, request: Any) -> tuple[str | None, dict[str, list[str]]]:  # type: ignore[override]
        subprotocol, headers = None, {}  # type: tuple[str | None, dict[str, list[str]]]
        for name, value in self._accepted.items():
            lowered = name.lower()
            if lowered == "sec-websocket-protocol":
                subprotocol = value.strip() or None
            elif lowered not in _NOT_FORWARDED:
                headers.setdefault(name, []).append(value)
        return subprotocol, headers

    def onOpen(self) -> None:
        self.registerProducer(_Pacer(self), True)
        self._socket.attach(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        size = len(payload)
        self._behind += size
        self._socket.client_message(payload, isBinary).addCallback(self._taken, size)
        if self._behind > RELAY_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            cast(IPushProducer, self.transport).pauseProducing()

    def _taken(self, _: object, size: int) -> None:
        self._behind -= size
        if self._reading_paused and self._behind <= RELAY_HIGH_WATER:
            self._reading_paused = False
            if self.state != self.STATE_CLOSED:
                cast(IPushProducer, self.transport).resumeProducing()

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        # The client's close (or its answer to ours): the app hears it now, with its code,
        # before autobahn answers it and drops the connection (which may end it at once).
        heard = code
        if heard is None:
            heard = NO_STATUS
        elif not _sendable(heard):
            heard = PROTOCOL_ERROR  # a code no close frame may carry: autobahn fails the socket
        self._socket.client_closed(heard, (reasonRaw or b"").decode("utf-8", "replace"))
        return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.ended()

    def ended(self) -> None:
        """The connection is gone; if no close frame came, the app hears 1006."""
        self._socket.client_closed(GONE, "")
        self.writable()

    # -- the socket's peer ------------------------------------------------------

    def send_message(self, data: bytes, binary: bool) -> Deferred[None] | None:
        if self.state != self.STATE_OPEN:
            return None
        self.sendMessage(data, isBinary=binary)
        if not self._writing_paused:
            return None
        if self._room is None:
            self._room = Once()
        waiting: Deferred[None] = self._room.wait()
        return waiting

    def close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            code = code if _sendable(code) else INTERNAL_ERROR
            self.sendCloseFrame(code, fit_text(reason, 123).encode("utf-8"))

    def writable(self, paused: bool = False) -> None:
        """The client's socket buffer is full (C{paused}) or has room again."""
        self._writing_paused = paused
        if not paused:
            room, self._room = self._room, None
            if room is not None:
                room.fire(None)


class _HookedAppSocket(_Hooks, _AppSocket):  # type: ignore[misc]  # autobahn bases disagree
    """An L{_AppSocket} with buntime's part of the handshake (L{_Hooks})."""


@implementer(IPushProducer)
class _Pacer:
    """Tells an L{_AppSocket} when the client's socket buffer fills and drains."""

    def __init__(self, socket: _AppSocket) -> None:
        self._socket = socket

    def pauseProducing(self) -> None:
        self._socket.writable(paused=True)

    def resumeProducing(self) -> None:
        self._socket.writable()

    def stopProducing(self) -> None:
        self._socket.writable()


_SHUTTING_DOWN = Response.error(
    503, "SHUTTING_DOWN", "The runtime is shutting down", {"retry-after": "1"}
)
"""The answer to an upgrade once the service is stopping."""


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
    _relays: WebSocketServerFactory = field(init=False)

    def __attrs_post_init__(self) -> None:
        # the settings of worker apps' WebSockets (each plugin's factory has its own)
        self._relays = WebSocketServerFactory(server=None, reactor=self.clock)
        self._relays.setProtocolOptions(
            maxMessagePayloadSize=MAX_MESSAGE,
            autoPingInterval=PING_INTERVAL,
            autoPingTimeout=PING_INTERVAL,
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
        # autobahn leaves its Factory base unparameterized
        protocol = cast("WebSocketServerProtocol | None", factory.buildProtocol(exchange.peer()))
        if protocol is None:
            exchange.respond(Response.error(500, "INTERNAL_ERROR", "No WebSocket handler"))
            return True
        # built as the plugin's factory builds it, then given buntime's hooks
        protocol.__class__ = _hooked(type(protocol))
        self._hand_over(exchange, cast(_Hooks, protocol), incoming, {"plugin": plugin.name})
        return True

    def relay(
        self, exchange: Exchange, request: Request, response: Response, fields: dict[str, Any]
    ) -> None:
        """
        Hand C{exchange}'s connection to the WebSocket a worker app accepted
        for C{request} (C{response}: the app's 101, whose body is the
        L{WorkerSocket}); when that cannot be (the runtime is closing, the
        request was no upgrade), answer the client instead.
        """
        body = response.body
        assert isinstance(body, WorkerSocket)
        fields["upgrade"] = "websocket"
        if self.closing or not exchange.head.upgrade:
            ensureDeferred(body.aclose())
            if self.closing:
                exchange.respond(_SHUTTING_DOWN)
            else:
                exchange.respond(
                    Response.error(502, "BAD_GATEWAY", "The app switched protocols unasked")
                )
            return
        protocol = _HookedAppSocket(body, response.headers)
        protocol.factory = self._relays
        self._hand_over(exchange, protocol, request, {"app": str(fields.get("app", ""))})

    def _hand_over(
        self, exchange: Exchange, protocol: _Hooks, request: Request, owner: dict[str, str]
    ) -> None:
        """Give C{exchange}'s connection to C{protocol}, tracked until it closes."""
        socket = _Socket(
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

    def _closed(self, socket: _Socket) -> None:
        if isinstance(socket.protocol, _AppSocket):  # the app hears of it, however it ended
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
