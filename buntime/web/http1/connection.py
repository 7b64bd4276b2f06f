"""
One client connection: requests read by llhttp, answered one at a time.

Reading (L{buntime.web.http1.reading}): the parser's callbacks gather and
judge a head, check the body limit of its path, and queue the complete
request.  Requests read ahead of the
one being answered (pipelining) wait in order; reading stops while too many
wait, while the client does not read what is written to it (the transport
paused this producer), and after a request that closes the connection.

Answering: the front door (L{buntime.web.http1.factory.Handler}) gets one
L{Exchange} at a time and answers it through C{write_response}
(L{buntime.web.http1.writing}).

Timing: one timer per connection ticks every half of the shorter of the
head and idle timeouts; a head not complete within C{header_timeout} gets
408, a connection idle for C{idle_timeout} is closed, and one whose peer
does not read for that long (or does not take its last answer) is aborted.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from httptools import HttpRequestParser
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IPushProducer, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer

from buntime._turn import EndOfTurn
from buntime.logs import log
from buntime.sockets import direct_socket
from buntime.stream import PushedStream
from buntime.web.http1.exchange import Exchange
from buntime.web.http1.head import Head, Refusal, request_id_for
from buntime.web.http1.reading import (
    CONTINUE,
    UPLOAD_HIGH_WATER,
    UPLOAD_LOW_WATER,
    RequestReading,
)
from buntime.web.http1.response import refusal_bytes
from buntime.web.http1.writing import AnswerWriting

if TYPE_CHECKING:
    from buntime.web.http1.factory import HTTP1Factory


@implementer(IPushProducer)
class HTTP1Connection(RequestReading, AnswerWriting, Protocol):
    """One client connection (see the module's docstring)."""

    transport: Any  # a TCP or TLS transport: its producer and write-buffer sides are used

    def __init__(self, factory: HTTP1Factory) -> None:
        self.factory = factory
        self._handler = factory.handler
        self._limits = factory.limits
        self._clock = factory.clock
        self._parser = HttpRequestParser(self)
        self._remote: str | None = None
        self._remote_port: int | None = None
        self._local: tuple[str, int] | None = None
        self._secure = False  # over TLS (--listen ssl:)
        self._socket: Any = None
        # the head being read
        self._target: list[bytes] = []
        self._target_size = 0
        self._lines: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._head_since: float | None = None  # when its first byte came; None: no head open
        self._head_bytes = 0
        self._trailer_bytes: int | None = None  # bytes read since a last chunk's header, or None
        # the body being read
        self._head: Head | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._limit = 0
        self._uploading = False
        self._upload: PushedStream | None = None  # the body being read, its request answered
        self._counted: PushedStream | None = None  # the last upload, until its exchange ends
        self._upload_unread = 0  # bytes of it read and not yet taken by its reader
        self._continued = False
        # requests read and waiting their turn, then the one being answered
        self._waiting: deque[Exchange | Refusal] = deque()
        self._current: Exchange | None = None
        self._held: list[bytes] | None = None  # bytes after an upgrade request's head
        self._unread_body: Head | None = None  # an upgrade request's, to be read (_replay_body)
        self._pumping = False
        # the connection
        self._done_reading = False  # a refusal, or a request that closes: nothing more is read
        self._linger = False  # the last answer closes, but the client may still be sending
        self._closed = False
        self._lost = False
        self._lingering = False  # written all, reading what the client still sends
        self._handed = False
        self._reading_paused = False
        self._writes_paused: Deferred[None] | None = None
        self._paused_since = 0.0
        self._idle_since = 0.0
        self._timer: Any = None
        self._unsent: list[bytes] = []  # whole answers sent at the end of the reactor turn
        self._unsent_size = 0
        self._turn = EndOfTurn.of(self._clock)

    # -- the connection --------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self._socket = direct_socket(transport)
        self._secure = ISSLTransport.providedBy(transport)
        if ITCPTransport.providedBy(transport):
            # answers (and a WebSocket handed over) go out as written, not after
            # the client's delayed ACK (twisted.web does the same)
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        peer, host = transport.getPeer(), transport.getHost()
        self._remote = getattr(peer, "host", None)
        self._remote_port = getattr(peer, "port", None)
        local, port = getattr(host, "host", None), getattr(host, "port", None)
        self._local = (local, port) if local is not None and port is not None else None
        self._idle_since = self._clock.seconds()
        limits = self._limits
        interval = min(limits.header_timeout, limits.idle_timeout) / 2
        if interval > 0:
            self._timer = self._clock.callLater(interval, self._tick, interval)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._handed:
            return
        self._closed = self._lost = True
        self._unsent.clear()
        self._stop_timer()
        self.factory.connection_closed()
        self._uploaded()
        upload, self._upload = self._upload, None
        if upload is not None:  # its reader learns that the rest will not come
            upload.fail(ConnectionError("The client went away during its upload"))
        self._waiting.clear()
        current, self._current = self._current, None
        if current is not None:
            current.lost(reason)
        self.resumeProducing()  # a stream waiting for the client sees it is gone

    def dataReceived(self, data: bytes) -> None:
        if self._done_reading:
            return
        if self._held is not None:  # after an upgrade head: for whoever reads next
            self._held.append(data)
            return
        self._idle_since = self._clock.seconds()
        self._feed(data)
        self._pump()

    # -- answering in order ----------------------------------------------------

    def _refuse(self, refusal: Refusal) -> None:
        """Answer C{refusal} in its turn and close; nothing more is read."""
        upload = self._upload
        if upload is not None:  # malformed chunks of an upload already being answered
            error = ConnectionError(f"The request body is malformed: {refusal.message}")
            self._break_upload(upload, refusal, error)
            return
        head = self._head
        if head is not None:
            refusal.request_id, refusal.path = head.request_id, head.path
        else:  # refused before its head was judged: what was read of it
            given = [value for name, value in self._lines if name.lower() == b"x-request-id"]
            refusal.request_id = given[-1] if given else None
        self._done_reading = True
        self._head_since = None
        self._uploaded()
        self._waiting.append(refusal)

    def _pump(self) -> None:
        """Answer what waits, one at a time, while answers finish at once."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                while (
                    self._current is None
                    and self._waiting
                    and not self._closed
                    and self._writes_paused is None
                ):
                    item = self._waiting.popleft()
                    if isinstance(item, Refusal):
                        self._send_refusal(item)
                        return
                    self._current = item
                    self._handler.answer(item)
                    if item.ended and not self._ended(item):
                        return
                if self._current is not None or self._waiting or self._closed:
                    break
                self._idle()
                if not self._waiting:  # what was held after an upgrade may have come in
                    break
        finally:
            self._pumping = False
        self._flow()

    def _idle(self) -> None:
        """Nothing left to answer: what waited behind the last answer may go on."""
        if self._current is not None or self._closed:
            return
        self._idle_since = self._clock.seconds()
        head = self._head
        if head is not None and head.expect and not self._continued and head.has_body:
            # a body waiting for 100 Continue behind earlier requests gets it now
            self._continued = True
            self._write(CONTINUE)
        held = self._held
        if held is not None:  # an upgrade request answered without a hand-over
            self._held = None
            self._parser = HttpRequestParser(self)
            self._feed(b"".join(held))

    def exchange_ended(self, exchange: Exchange) -> None:
        """C{exchange} has ended (see L{Exchange.on_end}): on to the next request."""
        if not self._pumping and self._ended(exchange):  # else the pump sees it
            self._pump()

    def _ended(self, exchange: Exchange) -> bool:
        """Done with C{exchange}; whether the connection takes the next request."""
        if self._current is not exchange:
            return False
        self._current = None
        if exchange.body is self._counted:  # what its reader left untaken holds nothing back
            self._counted = None
            self._upload_unread = 0
        if self._closed:
            return False
        upload = self._upload
        if upload is not None and exchange.body is upload:
            # answered before its upload all came: the rest is not read
            self._upload = None
            self._head = None  # (its reader may answer in on_body: no message follows)
            self._done_reading = True
            upload.fail(ConnectionError("The request was answered before its body arrived"))
            self._close(linger=True)
            return False
        if exchange.close or exchange.gone:
            self._close(linger=self._linger and not exchange.gone)
            return False
        return True

    def _flow(self) -> None:
        """Read while there is room for what is read; stop while the client does not read."""
        if self._closed:
            return
        unread_most = UPLOAD_LOW_WATER if self._reading_paused else UPLOAD_HIGH_WATER
        stop = (
            self._writes_paused is not None
            or len(self._waiting) >= self._limits.max_pipeline
            or self._upload_unread > unread_most
            or self._held is not None
            or self._done_reading
        )
        if stop != self._reading_paused:
            self._reading_paused = stop
            if stop:
                self.transport.pauseProducing()
            else:
                self._idle_since = self._clock.seconds()  # the client's silence counts from now
                self.transport.resumeProducing()

    def _close(self, linger: bool = False) -> None:
        """
        Close once what is written is sent (aborted if the peer does not take
        it in time).  C{linger}: over TCP, only stop writing, and read (and
        drop) what the client still sends until it closes or the next tick
        of the timer: a client still sending when its refusal was written
        would otherwise get a reset that can destroy the answer (RFC 9112 §9.6).
        """
        self._closed = True
        self._idle_since = self._clock.seconds()
        self._send_unsent()
        transport = self.transport
        # TLS cannot half-close: its transport provides ITCPTransport but passes
        # loseWriteConnection to the TCP socket under it
        if (
            linger
            and ITCPTransport.providedBy(transport)
            and not ISSLTransport.providedBy(transport)
        ):
            self._lingering = True
            transport.loseWriteConnection()
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resumeProducing()
            return
        self._done_reading = True  # what still comes is dropped
        if self._reading_paused:  # TLS reads the client's close_notify to finish its close
            self._reading_paused = False
            transport.resumeProducing()
        self._lose()

    def _lose(self) -> None:
        """
        Close the transport.  Nothing more is written, so this connection
        stops being its producer first: TLS (C{--listen ssl:}) sends its
        close and closes only once no producer is registered.
        """
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _send_refusal(self, refusal: Refusal) -> None:
        request_id = request_id_for(refusal.request_id)
        log(
            "info",
            "buntime:http:refused",
            f"{refusal.status} {refusal.message}",
            request_id=request_id,
            status=refusal.status,
            path=refusal.path,
        )
        self._write(refusal_bytes(refusal, self._clock.seconds(), request_id))
        self._close(linger=True)

    # -- the timer -------------------------------------------------------------

    def _tick(self, interval: float) -> None:
        self._timer = None
        if self._handed or self._lost:
            return
        now = self._clock.seconds()
        limits = self._limits
        if self._writes_paused is not None and now - self._paused_since >= limits.idle_timeout:
            self._abort("The client did not read its answer")
            return
        if (
            self._upload is not None
            and self._current is not None
            and self._current.body is self._upload  # its turn came
            and (self._continued or not self._current.head.expect)  # and the client may send
            and not self._reading_paused
            and now - self._idle_since >= limits.idle_timeout
        ):
            self._upload.fail(TimeoutError("The request body stopped arriving"))
            self._upload = None
            self._abort("The request body stopped arriving")
            return
        if self._closed:
            if self._lingering:
                self._lingering = False
                self._lose()
            elif now - self._idle_since >= limits.idle_timeout:
                self._abort("The client did not take its last answer")
                return
        elif self._current is None and not self._waiting:
            since = self._head_since
            if since is not None and now - since >= limits.header_timeout:
                self._refuse(Refusal(408, "The request head did not arrive in time"))
                self._pump()
            elif now - self._idle_since >= limits.idle_timeout:
                self._close()
        self._timer = self._clock.callLater(interval, self._tick, interval)

    def _abort(self, why: str) -> None:
        log("info", "buntime:http:aborted", why, remote=self._remote)
        self._closed = True
        self.transport.abortConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # -- hand-over -------------------------------------------------------------

    def hand_over(self, exchange: Exchange, protocol: IProtocol, head: bytes) -> None:
        """Give the connection to C{protocol} (see L{Exchange.hand_over})."""
        if self._current is not exchange or self._closed:
            return
        self._current = None
        self._handed = True
        self._send_unsent()
        self._stop_timer()
        self.factory.connection_closed()
        transport = self.transport
        transport.unregisterProducer()
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        if self._reading_paused:
            self._reading_paused = False
            transport.resumeProducing()
        held, self._held = self._held or [], None
        body = exchange.body if isinstance(exchange.body, bytes) else b""  # never an upload
        protocol.dataReceived(head + body + b"".join(held))

    # -- IPushProducer: the transport says when the client does not read -------

    def pauseProducing(self) -> None:
        if self._writes_paused is None:
            self._writes_paused = Deferred()
            self._paused_since = self._clock.seconds()
            self._flow()

    def resumeProducing(self) -> None:
        waiter, self._writes_paused = self._writes_paused, None
        if waiter is not None:
            waiter.callback(None)
            if self._current is None:
                self._pump()
            else:
                self._flow()

    def stopProducing(self) -> None:
        if self._current is not None:
            self._current.gone = True
        self.resumeProducing()
