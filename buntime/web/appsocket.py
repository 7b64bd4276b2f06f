"""
The client's side of a WebSocket a worker app accepted (L{AppSocket}): the
handshake answered with what the app accepted, messages relayed both ways
to the app's L{buntime.pool.websocket.WorkerSocket}, each way paced.
"""

from __future__ import annotations

from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from buntime.http import Headers
from buntime.once import Once
from buntime.pool.stream import fit_text
from buntime.pool.websocket import WorkerSocket
from buntime.web.handshake import INTERNAL_ERROR, HandshakeHooks

PROTOCOL_ERROR, NO_STATUS, GONE = 1002, 1005, 1006
"""
What an app hears of a client's close frame with a code no frame may carry,
of one without a code, and of a client gone without any close frame.
"""


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


class AppSocket(WebSocketServerProtocol):
    """
    The client's side of a WebSocket a worker app accepted: answers the
    handshake with the app's subprotocol and headers, then relays messages
    (the L{buntime.pool.websocket.ISocketPeer} of its L{WorkerSocket}).
    Reading from the client pauses while the app is behind by more than
    L{RELAY_HIGH_WATER} bytes, or while the client's socket buffer is full
    (the app's sends wait then too).
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
        if subprotocol is not None and subprotocol not in request.protocols:
            # autobahn fails on a subprotocol the client did not offer, and the
            # client never gets an answer; uvicorn sends it, and the client judges.
            headers["Sec-WebSocket-Protocol"] = [subprotocol]
            subprotocol = None
        return subprotocol, headers

    def onOpen(self) -> None:
        self.registerProducer(_Pacer(self), True)
        self._socket.attach(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        size = len(payload)
        self._behind += size
        self._socket.client_message(payload, isBinary).addCallback(self._taken, size)
        self._pace_reading()

    def _taken(self, _: object, size: int) -> None:
        self._behind -= size
        self._pace_reading()

    def _pace_reading(self) -> None:
        """
        Read from the client only while the app keeps up with it and the
        client reads what it is sent (its pings' pongs included).
        """
        pause = self._behind > RELAY_HIGH_WATER or self._writing_paused
        if pause == self._reading_paused:
            return
        self._reading_paused = pause
        if pause:
            cast(IPushProducer, self.transport).pauseProducing()
        elif self.state != self.STATE_CLOSED:
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
        if len(data) <= MAX_MESSAGE:
            self.sendMessage(data, isBinary=binary)
        else:
            # autobahn's sendMessage refuses a message over the limit set on what
            # the client sends; the app's are unbounded (as under uvicorn), so
            # one over it goes out through autobahn's frame API, which does not check.
            self.beginMessage(isBinary=binary)
            self.sendMessageFrame(data)
            self.endMessage()
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
        self._pace_reading()
        if not paused:
            room, self._room = self._room, None
            if room is not None:
                room.fire(None)


class HookedAppSocket(HandshakeHooks, AppSocket):  # type: ignore[misc]  # autobahn bases disagree
    """An L{AppSocket} with buntime's part of the handshake (L{HandshakeHooks})."""


@implementer(IPushProducer)
class _Pacer:
    """Tells an L{AppSocket} when the client's socket buffer fills and drains."""

    def __init__(self, socket: AppSocket) -> None:
        self._socket = socket

    def pauseProducing(self) -> None:
        self._socket.writable(paused=True)

    def resumeProducing(self) -> None:
        self._socket.writable()

    def stopProducing(self) -> None:
        self._socket.writable()
