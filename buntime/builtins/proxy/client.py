"""
The proxy's HTTP/1.1 client: kept-alive connections to each upstream, one
request at a time on each, answers read by llhttp (C{httptools}, the parser
the runtime reads requests with) and their bodies handed on as they arrive.

A request goes out as one write (head and body), or, when its body is a
stream (an upload, L{UpstreamPool.upload}), as its head and then each chunk
as the client sends it, paced by the upstream (the stream is not read while
the connection's buffer is full).  Its answer fires the request's Deferred
with an L{Answer} whose C{body} is bytes when the whole answer came in the
read that brought its head (most small answers), else a L{PushedStream} of
the body that pauses the connection while the reader is behind.
A connection is used again once its answer has been read to the end and
the upstream keeps it open; a request on a kept connection that the
upstream had closed meanwhile is sent once more on a new one when its
method is idempotent.  Idle connections are kept up to a cap per upstream
(above the clients' concurrency, or each request past it would connect
anew: a TCP handshake and an accept for both sides) and closed once idle
for C{idle_timeout} seconds, as nginx's C{keepalive} and
C{keepalive_timeout} do.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from typing import Any

from attrs import define
from httptools import HttpResponseParser
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

from buntime.builtins.proxy.rules import link_local
from buntime.sockets import direct_socket, send_now
from buntime.stream import PushedStream, close_body

HIGH_WATER = 4
"""Chunks waiting for the reader after which the upstream connection is paused."""
MAX_HEAD = 64 * 1024
"""Bytes an answer's head may take (as Envoy's 60 KiB): past it, the answer is a 502."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

Key = tuple[str, str, int]
"""An upstream: scheme, host, port."""


class UpstreamLost(Exception):
    """
    The connection ended before the answer was read; C{retryable}: a kept
    connection the upstream closed before answering anything.
    """

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class UpstreamRefused(Exception):
    """A guarded rule's upstream is at a link-local address (the SSRF guard): nothing was sent."""


@define
class Answer:
    """An upstream's answer, once its head is read."""

    status: int
    reason: str | None
    headers: list[tuple[str, str]]
    body: bytes | PushedStream


def endpoint_to(reactor: Any, key: Key, timeout: float = 10) -> Any:
    """The client endpoint of the upstream C{key}: TCP, with TLS for C{https}."""
    scheme, host, port = key
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if scheme == "https":
        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint


MAX_IDLE = 256
"""Idle connections kept per upstream by default."""
IDLE_TIMEOUT = 60.0
"""Seconds an idle upstream connection is kept by default."""


class UpstreamPool:
    """
    Connections to upstreams, kept alive between requests: at most
    C{per_upstream} idle ones each (more are made when all are busy, and
    closed after their answer), each closed once idle for C{idle_timeout}
    seconds.
    """

    def __init__(
        self,
        reactor: Any,
        per_upstream: int = MAX_IDLE,
        connect_timeout: float = 10,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self.per_upstream = per_upstream
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        # each upstream's idle connections, the longest idle first (taken from the end)
        self._idle: dict[Key, list[_Connection]] = {}
        self._all: set[_Connection] = set()
        self._sweep: Any = None  # the timer of the next look for connections idle too long
        self._closed = False  # closed: connections that finish their answer close too

    def request(
        self, key: Key, method: str, data: bytes, guarded: bool = False
    ) -> Deferred[Answer]:
        """
        Send C{data} (a whole request: head and body) to the upstream
        C{key}; fires with the answer once it is read (its body may go on),
        or fails with L{UpstreamLost}, L{UpstreamRefused} (C{guarded}: the
        upstream is at a link-local address) or what connecting raised.
        Cancelling it drops the connection.
        """
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.open:
                sent = self._send(connection, data, method, guarded)
                if method in IDEMPOTENT:
                    sent.addErrback(self._again, key, method, data, guarded)
                return sent
        return self._fresh(key, method, data, guarded)

    def _again(self, failure: Failure, key: Key, method: str, data: bytes, guarded: bool) -> object:
        """A kept connection the upstream closed as it was used: once more, on a new one."""
        if failure.check(UpstreamLost) and failure.value.retryable:
            return self._fresh(key, method, data, guarded)
        return failure

    def upload(
        self,
        key: Key,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes],
        guarded: bool = False,
        send_timeout: float | None = None,
    ) -> Deferred[Answer]:
        """
        Send the request C{head}, then C{body} as it comes, to the upstream
        C{key}, on a new connection (a kept one the upstream closed could
        not be tried again: the body is read once); fires as L{request}
        does, possibly before the body is all sent (an upstream may answer
        early), and fails with L{UpstreamLost} when the body breaks off.
        Once the answer has begun, an upstream that reads none of the body
        for C{send_timeout} seconds loses the connection (its answer then
        breaks off), as nginx's C{proxy_send_timeout} has it.
        """
        connecting = self._connect(key)
        return connecting.addCallback(self._upload, method, head, body, guarded, send_timeout)

    def _upload(
        self,
        connection: _Connection,
        method: str,
        head: bytes,
        body: AsyncIterable[bytes],
        guarded: bool,
        send_timeout: float | None,
    ) -> Deferred[Answer]:
        answered = self._send(connection, head, method, guarded)
        if connection.open and not answered.called:
            connection.send_body(body, self.reactor, send_timeout)
        return answered

    def _fresh(self, key: Key, method: str, data: bytes, guarded: bool) -> Deferred[Answer]:
        connecting = self._connect(key)
        return connecting.addCallback(self._send, data, method, guarded)

    def _send(
        self, connection: _Connection, data: bytes, method: str, guarded: bool
    ) -> Deferred[Answer]:
        if guarded and connection.link_local:
            self._done(connection, True)  # still good for the manifest's rules
            return fail(UpstreamRefused(connection.peer))
        return connection.send(data, method)

    def _connect(self, key: Key) -> Deferred[_Connection]:
        endpoint = endpoint_to(self.reactor, key, self.connect_timeout)
        connecting: Deferred[_Connection] = endpoint.connect(
            Factory.forProtocol(lambda: _Connection(key, self._done))
        )
        return connecting.addCallback(self._made)

    def _made(self, connection: _Connection) -> _Connection:
        self._all.add(connection)
        return connection

    def _done(self, connection: _Connection, reusable: bool) -> None:
        """C{connection}'s answer is read (or it broke): keep it for the next request, or not."""
        if not reusable or not connection.open:
            self._all.discard(connection)
            return
        idle = self._idle.setdefault(connection.key, [])
        if not self._closed and len(idle) < self.per_upstream:
            connection.idle_since = self.reactor.seconds()
            idle.append(connection)
            if self._sweep is None:
                self._sweep = self.reactor.callLater(self.idle_timeout, self._close_stale)
        else:
            self._all.discard(connection)
            connection.transport.loseConnection()

    def _close_stale(self) -> None:
        """Close the connections idle for C{idle_timeout}; look again when the next one will be."""
        self._sweep = None
        stale_before = self.reactor.seconds() - self.idle_timeout
        next_due: float | None = None
        for key, idle in list(self._idle.items()):
            fresh = 0
            while fresh < len(idle) and idle[fresh].idle_since <= stale_before:
                fresh += 1
            for connection in idle[:fresh]:
                self._all.discard(connection)
                connection.open = False
                connection.transport.loseConnection()
            del idle[:fresh]
            if not idle:
                del self._idle[key]
            elif next_due is None or idle[0].idle_since < next_due:
                next_due = idle[0].idle_since
        if next_due is not None:
            delay = max(0.0, next_due + self.idle_timeout - self.reactor.seconds())
            self._sweep = self.reactor.callLater(delay, self._close_stale)

    def close(self) -> None:
        """Close every connection (idle ones at once, busy ones too)."""
        self._closed = True
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        self._idle.clear()
        for connection in list(self._all):
            connection.transport.loseConnection()
        self._all.clear()


class _Connection(Protocol):
    """One connection to an upstream (see the module's docstring)."""

    transport: Any

    def __init__(self, key: Key, done: Callable[[_Connection, bool], None]) -> None:
        self.key = key
        self._done = done
        self.open = False
        self.peer = ""  # the upstream's IP address, once connected
        self.link_local = False  # whether it is link-local (see UpstreamPool.request's guarded)
        self.idle_since = 0.0  # when it was last put back idle (the pool's clock)
        self._parser = HttpResponseParser(self)
        self._waiting: Deferred[Answer] | None = None
        self._stream: PushedStream | None = None
        self._used = 0
        self._read_any = False
        self._head_only = False
        self._reason: str | None = None
        self._headers: list[tuple[str, str]] = []
        self._unread = 0
        self._paused = False
        self._answer: Answer | None = None  # read, not yet given (see dataReceived)
        self._sending = False  # a body still going out (see send_body)
        self._pacing: _Pacing | None = None  # what the transport pauses while it goes out
        self._early: list[bytes] = []
        self._socket: Any = None  # for send_now, once connected (None over TLS)
        self._stall: Any = None  # while an upload waits for the upstream to read: its timer
        self._in_head = False  # an answer's head is awaited or being read
        self._head_bytes = 0  # bytes read while it was (see MAX_HEAD)

    def connectionMade(self) -> None:
        self.open = True
        self._socket = direct_socket(self.transport)
        self.peer = str(getattr(self.transport.getPeer(), "host", ""))
        self.link_local = link_local(self.peer)

    def send(self, data: bytes, method: str) -> Deferred[Answer]:
        """Send a request; its answer's head fires the Deferred."""
        self._used += 1
        self._read_any = False
        self._head_only = method == "HEAD"
        self._in_head = True
        self._head_bytes = 0
        waiting: Deferred[Answer] = Deferred(self._cancelled)
        self._waiting = waiting
        send_now(self.transport, self._socket, data)  # no wait for the socket to say it may
        return waiting

    def send_body(
        self, body: AsyncIterable[bytes], clock: Any = None, timeout: float | None = None
    ) -> None:
        """
        Send C{body} after the head L{send} wrote, chunk by chunk, no faster
        than the upstream reads it; the connection is not used again unless
        it is all sent by the end of the answer.  An upstream that reads
        none of it for C{timeout} seconds (on C{clock}) once its answer has
        begun loses the connection.
        """
        self._sending = True
        ensureDeferred(self._send_body(body, clock, timeout)).addErrback(self._body_broke)

    async def _send_body(
        self, body: AsyncIterable[bytes], clock: Any, timeout: float | None
    ) -> None:
        pacing = self._pacing = _Pacing()
        self.transport.registerProducer(pacing, True)
        try:
            async for chunk in body:
                if not self.open:  # the answer came and the connection closed, or it broke
                    await close_body(body)  # what is left of the upload is not read
                    return
                self.transport.write(chunk)
                if pacing.paused is not None:
                    if clock is not None and timeout is not None:
                        self._stall = clock.callLater(timeout, self._send_stalled, clock, timeout)
                    try:
                        await pacing.paused
                    finally:
                        stall, self._stall = self._stall, None
                        if stall is not None and stall.active():
                            stall.cancel()
        finally:
            self._sending = False
            self._pacing = None
            if self.open:
                self.transport.unregisterProducer()

    def _send_stalled(self, clock: Any, timeout: float) -> None:
        """
        The upstream has read none of the body for C{timeout} seconds: if
        its answer has begun, drop the connection; else (or while the proxy
        itself does not read the answer) look again later.
        """
        if not self.open or self._pacing is None or self._pacing.paused is None:
            return
        if self._waiting is not None or self._paused:
            # no answer yet (the forwarder's timeout answers 504), or the proxy itself
            # stopped reading the answer (its client does not read): not the upstream's stall
            self._stall = clock.callLater(timeout, self._send_stalled, clock, timeout)
            return
        self._broke(UpstreamLost("the upstream stopped reading the request body"))
        self.open = False
        self.transport.abortConnection()

    def _body_broke(self, failure: Failure) -> None:
        """The client's upload broke off: the upstream's request cannot be finished."""
        self._broke(UpstreamLost(f"the request body broke off: {failure.getErrorMessage()}"))
        self.open = False
        self.transport.abortConnection()

    def _cancelled(self, _: Deferred[Answer]) -> None:
        self._waiting = None
        self.open = False
        self.transport.abortConnection()  # the client went away: nothing more to read here

    # -- llhttp's callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiting is None:
            # an answer nobody asked for (bytes past the last one's length, or unasked):
            # the connection cannot tell whose answer is whose any more
            raise ValueError("the upstream sent an answer to no request")
        self._headers = []
        self._reason = None

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer: the final one follows
        self._in_head = False
        self._answer = Answer(status, self._reason, self._headers, b"")
        self._early = []
        if self._head_only:  # llhttp would wait for the body a HEAD answer does not have
            self._give()
            self._finish(reusable=False)

    def on_body(self, data: bytes) -> None:
        if self._answer is not None:  # what came with the head: given with it
            self._early.append(data)
            return
        stream = self._stream
        if stream is None:
            return
        ack: Deferred[object] = Deferred()
        ack.addCallback(self._taken)
        self._unread += 1
        stream.feed(data, ack)
        if self._unread > HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            return
        answer = self._answer
        if answer is not None:  # the whole answer in one read: its body as bytes
            answer.body = b"".join(self._early)
            self._give()
        else:
            stream, self._stream = self._stream, None
            if stream is not None:
                stream.end()
        reusable = (
            self.open
            and self._parser.should_keep_alive()
            and not self._paused
            and not self._sending
        )
        self._finish(reusable=reusable)

    def _give(self) -> None:
        """Fire the request's Deferred with the answer read."""
        answer, self._answer, self._early = self._answer, None, []
        waiting, self._waiting = self._waiting, None
        if waiting is not None and answer is not None:
            waiting.callback(answer)

    def _give_streamed(self) -> None:
        """The answer's head is read and its body goes on: a stream, with what came so far."""
        answer = self._answer
        assert answer is not None
        early = self._early
        self._stream = answer.body = PushedStream(self._reader_gone)
        self._give()
        for chunk in early:
            self.on_body(chunk)

    # -- the connection -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._read_any = True
        if self._in_head:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._in_head and self._head_bytes > MAX_HEAD:
                raise ValueError(f"its head is over {MAX_HEAD} bytes")
        except Exception as error:  # an answer that is no HTTP/1.1
            self._broke(UpstreamLost(f"the upstream's answer is malformed: {error}"))
            self.open = False  # never taken from the idle ones again
            self.transport.abortConnection()
            return
        if self._answer is not None:  # its body goes on past this read
            self._give_streamed()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.open = False
        if self._stream is not None or self._waiting is not None:
            retryable = self._used > 1 and not self._read_any and self._stream is None
            message = f"the upstream closed the connection: {reason.value}"
            self._broke(UpstreamLost(message, retryable))
        if self._pacing is not None:  # an upload's sender, if it waits, finds it closed
            self._pacing.resumeProducing()
        self._done(self, False)

    def _broke(self, error: Exception) -> None:
        self._answer = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(error)
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.fail(ConnectionError(f"the upstream's answer broke off: {error}"))

    def _finish(self, reusable: bool) -> None:
        if reusable:
            self._done(self, True)  # llhttp reads the next answer on from here
        else:
            self.open = False
            if self._pacing is not None:  # answered before the body was all sent: no more of it
                self.transport.unregisterProducer()
                self._pacing.resumeProducing()  # its sender, if it waits, finds it closed
            self.transport.loseConnection()

    def _taken(self, _: object) -> None:
        self._unread -= 1
        if self._paused and self._unread <= HIGH_WATER // 2:
            self._paused = False
            self.transport.resumeProducing()

    def _reader_gone(self) -> None:
        """The client went away mid-body: this connection cannot be used again."""
        self._stream = None
        self.open = False
        self.transport.abortConnection()


@implementer(IPushProducer)
class _Pacing:
    """
    What an upload's sender registers on the upstream connection: the
    transport pauses it while its buffer is full (C{paused} is then a
    Deferred that fires when the sender may go on).
    """

    def __init__(self) -> None:
        self.paused: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        if self.paused is None:
            self.paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self.paused = self.paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()  # the sender finds the connection closed
