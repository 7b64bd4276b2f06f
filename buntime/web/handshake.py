"""
buntime's part of every WebSocket handshake it hands over, plugin's or
app's (L{HandshakeHooks}), and the connection it tracks from handshake to
close (L{TrackedSocket}): the HTTP request ends when the handshake is
answered, with its status.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from buntime.logs import log
from buntime.web.http1 import Exchange, HandedOver

GOING_AWAY = 1001
"""The close code sent to open WebSockets when the runtime stops (RFC 6455 §7.4.1)."""


INTERNAL_ERROR = 1011
"""The close code for a socket whose handler failed in C{onOpen}."""


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
class TrackedSocket:
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


class HandshakeHooks(WebSocketServerProtocol):
    """
    buntime's part of every WebSocket handshake, in overrides of autobahn's
    own callbacks (as its users write them) around the handler's: autobahn
    takes a 101's extra headers only from C{onConnect}'s result (so
    C{x-request-id} is added there), writes its refusals itself in
    C{failHandshake} (their status is noted there), and has sent the 101
    when it calls C{onOpen} (the HTTP request ends there, before the
    handler's own C{onOpen} runs, whatever that does).
    """

    buntime_socket: TrackedSocket  # set before the connection is handed over

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


def give_hooks(factory: WebSocketServerFactory) -> None:
    """
    Make C{factory} (a plugin's autobahn factory) build its protocols with
    L{HandshakeHooks}: its C{protocol} becomes a subclass (of the same name)
    of the class the plugin gave, made once and kept on the factory, so a
    reloaded plugin's classes go with its factory.  The factory's own
    C{buildProtocol}, Twisted's or the plugin's, builds it as before.
    """
    given = factory.protocol
    if isinstance(given, type) and not issubclass(given, HandshakeHooks):
        factory.protocol = _hooked(given)


def _hooked(cls: type[Any]) -> type[Any]:
    """A subclass of C{cls} that adds L{HandshakeHooks}, named and placed as C{cls} is."""
    names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (HandshakeHooks, cls), names)
