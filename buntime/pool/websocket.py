"""
The runtime's end of a WebSocket an app accepted in its worker.

An upgrade request goes to the worker like any request; when the app
accepts, the pool's answer is a 101 L{buntime.http.Response} whose body is a
L{WorkerSocket}.  The front door then hands the client's connection to a
WebSocket protocol (L{buntime.web.websocket}) and attaches it as the
socket's L{ISocketPeer}: the app's messages go to the client, the client's
to the app, each way paced by the other side (AMP answers held back while
the client or the app is slow).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.defer import Deferred, succeed

from buntime.pool.commands import CHUNK_SIZE, WebSocketDisconnect, WebSocketReceive
from buntime.pool.stream import chunks, fit_text

GOING_AWAY, GONE, INTERNAL_ERROR, SERVICE_RESTART = 1001, 1006, 1011, 1012
"""Close codes (RFC 6455 §7.4.1, IANA): going away, connection lost, failure, restart."""


class ISocketPeer(Protocol):
    """The client's side of a L{WorkerSocket}: a WebSocket protocol speaking to the client."""

    def send_message(self, data: bytes, binary: bool) -> Deferred[None] | None:
        """Send one message; C{None}, or a Deferred that fires once the client can take more."""

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket with C{code} and C{reason} (once; later calls do nothing)."""


@define(eq=False)
class WorkerSocket:
    """
    One app's accepted WebSocket, for request C{rid} on a worker's channel
    (C{call_remote}).  Until a peer is L{attach}ed, what the app sends waits
    here (and the app with it).  C{abandon} stops the app's call when the
    socket cannot be used at all.
    """

    _call_remote: Callable[..., Any]
    rid: int
    _abandon: Callable[[], None]
    _peer: ISocketPeer | None = None
    _early: list[tuple[bytes, bool, Deferred[Any]]] = field(factory=list)
    _parts: list[bytes] = field(factory=list)
    _close: tuple[int, str] | None = None  # the app's (or the end's), until a peer is attached
    _client_closed: bool = False
    _over: bool = False

    def attach(self, peer: ISocketPeer) -> None:
        """The client's WebSocket is open: deliver what the app sent meanwhile, then the rest."""
        self._peer = peer
        early, self._early = self._early, []
        for data, binary, ack in early:
            sent = peer.send_message(data, binary)
            if sent is None:
                ack.callback({})
            else:
                sent.addBoth(_answer, ack)
        if self._close is not None:
            peer.close(*self._close)

    def __aiter__(self) -> AsyncIterator[bytes]:
        """As an HTTP body, a WebSocket is empty (its messages are not the body)."""
        return _empty()

    # -- from the app ----------------------------------------------------------

    def app_message(self, data: bytes, binary: bool, final: bool) -> Deferred[Any]:
        """A piece of a message from the app; the AMP answer, held while the client is slow."""
        self._parts.append(data)
        if not final:
            return succeed({})
        message, self._parts = b"".join(self._parts), []
        if self._peer is None:
            ack: Deferred[Any] = Deferred()
            self._early.append((message, binary, ack))
            return ack
        sent = self._peer.send_message(message, binary)
        if sent is None:
            return succeed({})
        return sent.addBoth(lambda _: {})

    def app_closed(self, code: int, reason: str) -> None:
        """The app closes the socket."""
        self._closing(code, reason)

    def retire(self) -> None:
        """The worker is retiring: close with 1012 (the client reconnects to a fresh one)."""
        self._closing(SERVICE_RESTART, "worker retiring")

    def end(self) -> None:
        """The app's call returned (its worker closed the socket first, if it was open)."""
        self._over = True
        self._closing(1000, "")

    def fail(self, error: BaseException) -> None:
        """The app failed, or its worker went away: close with 1011."""
        self._over = True
        self._closing(INTERNAL_ERROR, "")

    async def aclose(self) -> None:
        """The socket is not wanted after all (the client left before it opened)."""
        self.client_closed(GONE, "")
        self._over = True
        self._abandon()

    def _closing(self, code: int, reason: str) -> None:
        if self._peer is not None:
            self._peer.close(code, reason)
        elif self._close is None:
            self._close = (code, reason)

    # -- from the client -------------------------------------------------------

    def client_message(self, data: bytes, binary: bool) -> Deferred[None]:
        """
        A message from the client, to the app: fires once the app can take
        more (at once when the app is gone).
        """
        if self._over or self._client_closed:
            return succeed(None)
        pieces = chunks(data, CHUNK_SIZE) or [b""]
        last = len(pieces) - 1
        sent: Deferred[Any] = succeed(None)
        try:
            for index, piece in enumerate(pieces):
                sent = self._call_remote(
                    WebSocketReceive, rid=self.rid, data=piece, binary=binary, final=index == last
                )
        except Exception:
            return succeed(None)  # the channel is gone: the app's end comes as a failure
        # a failed answer means the channel closed: the socket then ends through the exchange
        return sent.addBoth(lambda _: None)

    def client_closed(self, code: int, reason: str) -> None:
        """The client closed the socket with C{code} (1006: it went away)."""
        if self._client_closed or self._over:
            return
        self._client_closed = True
        try:
            self._call_remote(
                WebSocketDisconnect, rid=self.rid, code=code, reason=fit_text(reason, 123)
            )
        except Exception:
            pass  # the channel is gone: the app's end comes as a failure


def _answer(_: object, ack: Deferred[Any]) -> None:
    ack.callback({})


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing
