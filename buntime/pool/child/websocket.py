"""
A WebSocket as the worker sees it: the client's messages arriving from the
runtime (L{buntime.pool.commands.WebSocketReceive} pieces, then a
L{buntime.pool.commands.WebSocketDisconnect}), queued for the app.

The runtime speaks the WebSocket protocol with the client (handshake,
frames, pings); the worker only sees whole messages, and the app's ASGI
C{websocket} scope (L{buntime.pool.child.asgi}).  Feeding pauses (the
answer to C{WebSocketReceive} is held back) while more than L{HIGH_WATER}
bytes wait for the app: the runtime then stops reading from the client.
"""

from __future__ import annotations

import base64
from collections import deque

from attrs import define, field
from twisted.internet.defer import Deferred, succeed

from buntime.once import Once
from buntime.pool.child.body import HIGH_WATER

GONE = 1006
"""The close code of a client that went away without a close frame (RFC 6455 §7.4.1)."""


class SocketClosed(OSError):
    """The WebSocket is closed: nothing more can be sent on it (ASGI: C{send} raises)."""


def _tokens(pairs: list[list[str]], name: str) -> list[str]:
    return [
        token.strip().lower()
        for key, value in pairs
        if key.lower() == name
        for token in value.split(",")
    ]


def wants_websocket(method: str, pairs: list[list[str]]) -> bool:
    """Whether a request (its method and C{[name, value]} header pairs) asks for a WebSocket."""
    return (
        method.upper() == "GET"
        and "websocket" in _tokens(pairs, "upgrade")
        and "upgrade" in _tokens(pairs, "connection")
    )


def handshake_error(pairs: list[list[str]]) -> str | None:
    """
    Why a WebSocket handshake (its C{[name, value]} header pairs) cannot be
    answered (RFC 6455 §4.2.1: a key of 16 bytes in base64, version 13), or
    C{None}.  uvicorn refuses these with 400 before the app is called.
    """
    keys = [value.strip() for name, value in pairs if name.lower() == "sec-websocket-key"]
    versions = [value.strip() for name, value in pairs if name.lower() == "sec-websocket-version"]
    if len(keys) != 1:
        return "Missing or repeated Sec-WebSocket-Key header"
    try:
        key = base64.b64decode(keys[0], validate=True)
    except ValueError:
        key = b""
    if len(key) != 16:
        return f"Invalid Sec-WebSocket-Key header: {keys[0][:64]!r}"
    if versions != ["13"]:
        return "Unsupported or missing Sec-WebSocket-Version header (13 is supported)"
    return None


Message = tuple[bool, bytes]
"""C{(binary, data)}: one whole message from the client."""


@define(eq=False)
class SocketInbox:
    """
    What the client sends on one WebSocket, message by message.  The app
    takes them with L{next}: a L{Message}, or the close code (an C{int})
    once the client has closed and every message before it was taken.
    """

    _messages: deque[Message] = field(factory=deque)
    _parts: list[bytes] = field(factory=list)
    _buffered: int = 0
    _closed: tuple[int, str] | None = None
    _reader: Deferred | None = None
    _room: Once | None = None

    @property
    def closed(self) -> tuple[int, str] | None:
        """C{(code, reason)} once the client has closed (or left), else C{None}."""
        return self._closed

    def feed(self, data: bytes, binary: bool, final: bool) -> Deferred | None:
        """
        One piece of a message (C{final}: its last).  Returns C{None}, or a
        Deferred that fires once the app has caught up (answer the runtime then).
        """
        if self._closed is not None:
            return None
        self._parts.append(data)
        self._buffered += len(data)
        if final:
            message = (binary, b"".join(self._parts))
            self._parts = []
            reader, self._reader = self._reader, None
            if reader is not None:
                self._buffered -= len(message[1])
                reader.callback(message)
            else:
                self._messages.append(message)
        if self._buffered <= HIGH_WATER:
            return None
        if self._room is None:
            self._room = Once()
        return self._room.wait()

    def disconnect(self, code: int, reason: str = "") -> None:
        """The client closed with C{code} (1006: it went away without closing)."""
        if self._closed is not None:
            return
        self._closed = (code, reason)
        self._parts = []
        self._release()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.callback(code)

    def next(self) -> Deferred:
        """The next L{Message}, or the close code once the client has closed."""
        if self._reader is not None:
            raise RuntimeError("another receive() is already waiting")
        if self._messages:
            message = self._messages.popleft()
            self._buffered -= len(message[1])
            if self._buffered <= HIGH_WATER:
                self._release()
            return succeed(message)
        if self._closed is not None:
            return succeed(self._closed[0])
        self._reader = Deferred(self._forget)
        return self._reader

    def _forget(self, reader: Deferred) -> None:
        """The app stopped waiting (its task was cancelled)."""
        if self._reader is reader:
            self._reader = None

    def _release(self) -> None:
        room, self._room = self._room, None
        if room is not None:
            room.fire(None)
