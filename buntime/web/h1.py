"""
The HTTP/1.1 connection every client talks to, with a fast lane for worker apps.

A request for a worker app that no plugin takes part in (see
L{buntime.web.frontdoor.FrontDoor.takes_directly}) is read, answered and
written here, without twisted.web's C{Request} objects: that is most of the
traffic, and twisted.web's per-request work cost as much as the runtime's own.

Anything else (the core API, plugins, WebSocket upgrades, chunked uploads,
HTTP/1.0, and any head this module does not find plain and well-formed) is
handed to twisted.web: the connection's bytes, from the first byte of that
request on, go to a L{buntime.web.limits.LimitedChannel} for the rest of the
connection's life, which answers exactly as it would have on its own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString
from twisted.web.server import version as SERVER_VERSION
from zope.interface import implementer

from buntime._logging import log
from buntime.http import Headers, Response
from buntime.web.frontdoor import HOP_BY_HOP
from buntime.web.limits import refuse_body

MAX_HEAD = 16 * 1024
"""The longest request head taken here (twisted.web's own limit for a line and for all headers)."""
MAX_HEADERS = 500
"""The most header lines taken here (twisted.web's limit)."""
PAUSE_BUFFERED = 256 * 1024
"""Stop reading from a client once this much of its next requests waits behind the current one."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_METHOD = re.compile(rb"[A-Z]+\Z")
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")  # visible ASCII: what twisted.web takes too
_LENGTH = re.compile(r"[0-9]+\Z")
_NO_BODY = frozenset({204, 304})
_HOP_BY_HOP = HOP_BY_HOP | {"content-length", "date", "server"}
"""Response headers the channel writes itself, or never passes on."""


class Head:
    """A plain request head: what the fast lane needs of it (never changed: heads are shared)."""

    __slots__ = ("close", "expect", "headers", "length", "method", "path", "request_id", "target")

    def __init__(
        self,
        method: str,
        target: str,
        headers: tuple[tuple[str, str], ...],
        length: int,
        close: bool,
        expect: bool,
        request_id: bytes | None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.headers = headers
        self.length = length
        self.close = close
        self.expect = expect
        self.request_id = request_id


def parse_head(block: bytes) -> Head | None:
    """
    The request head C{block} (without its final blank line) when it is a
    plain HTTP/1.1 request the fast lane takes: origin-form target, CRLF
    line ends, token header names, at most one decimal C{Content-Length},
    no C{Transfer-Encoding}, C{Upgrade} or unknown C{Expect}.  C{None} for
    anything else, which twisted.web then answers (or refuses) itself.
    """
    if block.count(b"\n") != block.count(b"\r\n") or block.count(b"\r") != block.count(b"\r\n"):
        return None  # a bare CR or LF: leave the judgement to twisted.web
    lines = block.split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    method, target = parts[0], parts[1]
    if not _TARGET.match(target) or not _METHOD.match(method) or b"\x00" in block:
        return None
    headers = []
    length, close, expect, request_id = -1, False, False, None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return None  # also obs-fold (a leading space) and a space before the colon
        value = value.strip(b" \t")
        lower = name.lower()
        if lower == b"content-length":
            if length >= 0 or not value.isdigit():
                return None
            length = int(value)
        elif lower == b"transfer-encoding" or lower == b"upgrade":
            return None
        elif lower == b"connection":  # every Connection header counts (one list)
            close = close or b"close" in [t.strip() for t in value.lower().split(b",")]
        elif lower == b"expect":
            if value.lower() != b"100-continue":
                return None
            expect = True
        elif lower == b"x-request-id":
            request_id = value
            continue  # the front door sets the request's own
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    return Head(
        method.decode("ascii"),
        target.decode("latin-1"),
        tuple(headers),
        max(length, 0),
        close,
        expect,
        request_id,
    )


class _EndOfTurn:
    """
    The connections with whole responses to send at the end of the reactor
    turn, one after the other.  Sent at once, each response would wake the
    client (another process) while this one still works on the next: a
    wake-up per response, which on a small machine cost more than all the
    rest of a response.  Sent together, one wake-up serves many, as in
    twisted.web (whose writes wait for the next turn).  One per site.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._channels: list[FrontChannel] = []

    @classmethod
    def of(cls, site: Any, clock: Any) -> _EndOfTurn:
        batch = getattr(site, "_end_of_turn", None)
        if batch is None:
            batch = site._end_of_turn = cls(clock)
        return batch

    def add(self, channel: FrontChannel) -> None:
        if not self._channels:
            self._clock.callLater(0, self._send)
        self._channels.append(channel)

    def _send(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            channel._send_unsent()


_HEADS: dict[bytes, Head | None] = {}
_HEADS_MAX = 256
_HEAD_KEPT = 2048


def _parsed_head(block: bytes) -> Head | None:
    """
    L{parse_head}, remembering the last heads of at most 2 KiB: a client
    (a service polling another, a load test) often sends the same head
    again, and then gets the same (unchanging) L{Head}.
    """
    try:
        return _HEADS[block]
    except KeyError:
        pass
    head = parse_head(block)
    if len(block) <= _HEAD_KEPT:
        if len(_HEADS) >= _HEADS_MAX:
            del _HEADS[next(iter(_HEADS))]  # the oldest
        _HEADS[block] = head
    return head


def _clean(text: str) -> bytes:
    """A header name or value as bytes, line breaks replaced as twisted.web does."""
    data = text.encode("latin-1", "replace")
    if b"\n" in data or b"\r" in data:
        data = b" ".join(data.splitlines())
    return data


def _render_headers(headers: Headers) -> tuple[bytes, str | None]:
    """
    How the fast lane writes an app's C{headers}: their lines (but the ones
    it writes itself or never passes on) and the app's own
    C{content-length}, if any.
    """
    lines = []
    given_length = None
    for name, value in headers.items():
        lower = name.lower()
        if lower in _HOP_BY_HOP:
            if lower == "content-length":
                given_length = value.strip()
            continue
        lines.append(b"%s: %s" % (_clean(name), _clean(value)))
    return b"\r\n".join(lines), given_length


class Exchange:
    """
    One fast-lane request on its connection: what the front door reads of it
    (C{method}, C{path}, C{target}, C{headers}, C{body}, C{remote}), and
    L{respond}, which writes the answer.  It ends (see L{on_end}) once the
    response is written, or when the connection is lost first.
    """

    __slots__ = (
        "_channel",
        "_ends",
        "_result",
        "body",
        "ended",
        "gone",
        "head",
        "remote",
        "status",
        "written",
    )

    def __init__(self, channel: FrontChannel, head: Head, body: bytes, remote: str | None) -> None:
        self._channel = channel
        self.head = head
        self.body = body
        self.remote = remote
        self.status = 200
        self.gone = False
        self.written = False
        self.ended = False
        self._result: Failure | None = None
        self._ends: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def on_end(self, callback: Callable[..., object], *args: Any) -> None:
        """
        Call C{callback(result, *args)} when the exchange ends (at once if it
        has): C{result} is C{None} once the response is written, or the
        L{Failure} of a connection lost first.  Plain calls, in order: every
        request has two, and a Deferred's machinery cost more than they do.
        """
        if self.ended:
            self._call(callback, args)
        else:
            self._ends.append((callback, args))

    @property
    def finished(self) -> Deferred[None]:
        """A new Deferred of the end: C{None}, or the failure (see L{on_end})."""
        finished: Deferred[None] = Deferred()
        self.on_end(_fire, finished)
        return finished

    def _end(self, result: Failure | None) -> None:
        if self.ended:
            return
        self.ended, self._result = True, result
        ends, self._ends = self._ends, []
        for callback, args in ends:
            self._call(callback, args)

    def _call(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            callback(self._result, *args)
        except Exception as error:
            log(
                "error",
                "buntime:http:internal-error",
                "Unhandled error at the end of a request",
                error=repr(error),
            )

    def respond(self, response: Response, request_id: str) -> Deferred[None] | None:
        """
        Write C{response}: C{None} once a body of bytes is written, or a
        Deferred that fires when a streamed body is.
        """
        if self.gone or self.written:
            aclose = getattr(response.body, "aclose", None)
            written = ensureDeferred(aclose()) if aclose is not None else None
        else:
            written = self._channel.write_response(self, response, request_id)
        if written is not None:
            written.addErrback(_stream_failed)
        return written

    def lost(self, reason: Failure) -> None:
        """The connection went away before the response was written."""
        self.gone = True
        self._end(reason)

    def done(self) -> None:
        """The response is written."""
        self._end(None)


def _fire(result: Failure | None, finished: Deferred[None]) -> None:
    if result is None:
        finished.callback(None)
    else:
        finished.errback(result)


def _stream_failed(failure: Failure) -> None:
    """A streamed body ended early: cancelled (the client left), or an error to log."""
    if not failure.check(CancelledError):
        log(
            "error",
            "buntime:http:stream-failed",
            "Response stream failed",
            error=failure.getErrorMessage(),
        )


class _DateCache:
    """The C{Date} header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def __call__(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = datetimeToString(second)
        return self._value


_date = _DateCache()


@implementer(IPushProducer)
class FrontChannel(Protocol):
    """
    One client connection.  C{site} is the L{buntime.web.limits.LimitedSite}
    (its C{resource} the front door, its C{body_limit} and C{state}); C{addr}
    the client's address, for the twisted.web channel a handover builds.
    """

    transport: Any  # a TCP or TLS transport: its producer and write-buffer sides are used

    def __init__(self, site: Any, addr: Any) -> None:
        self.site = site
        self.factory = site
        self._addr = addr
        self._door = site.resource
        self._clock = site.reactor
        self._idle_timeout = site.timeOut
        # When the connection went idle (nothing answered, nothing arriving);
        # None while a request is answered.  One timer checks it (see _check_idle).
        self._idle_since: float | None = None
        self._timer: Any = None
        self._chunks: list[bytes] = []  # what arrived and is not answered yet
        self._size = 0
        self._head: Head | None = None
        self._head_end = 0
        self._need = 0  # the bytes the current request takes, head and body
        self._uploading = False
        self._exchange: Exchange | None = None
        self._inner: Any = None
        self._remote: str | None = None
        self._writing_paused: Deferred[None] | None = None
        self._reading_paused = False
        self._closed = False
        self._socket: Any = None
        self._unsent: list[bytes] = []  # whole responses to send at the end of the turn

    # -- the connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if (
            isinstance(transport, tcp.Connection)
            and not getattr(transport, "TLS", False)
            and hasattr(transport, "dataBuffer")  # what _send_unsent reads of Twisted's buffer
            and hasattr(transport, "_tempDataLen")
        ):
            self._socket = transport.socket
        transport.registerProducer(self, True)
        self._remote = getattr(self.transport.getPeer(), "host", None)
        self._idle()

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._exchange is not None:  # the next requests wait for this one's answer
            if self._size > PAUSE_BUFFERED and not self._reading_paused:
                self._reading_paused = True
                self.transport.pauseProducing()
            return
        if self._head is None or self._size >= self._need:
            self._next()
            if self._exchange is not None:
                return  # answering: no idle time
        # more of the request to come (a body is joined once it is all here):
        # the idle time starts again
        self._idle_since = self._clock.seconds()

    def _buffer(self) -> bytes:
        """All that waits, as one string."""
        chunks = self._chunks
        if len(chunks) > 1:
            chunks[:] = [b"".join(chunks)]
        return chunks[0] if chunks else b""

    def _keep(self, data: bytes) -> None:
        """Make C{data} all that waits."""
        self._chunks = [data] if data else []
        self._size = len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._unsent.clear()
        self._stop_timer()
        if self._inner is not None:
            self._inner.connectionLost(reason)
            return
        self._uploaded()
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.lost(reason)
        self.resumeProducing()

    # -- the idle timeout -------------------------------------------------------
    #
    # One timer per connection, moved rather than cancelled and made again for
    # every request: a request only marks the connection busy, its end marks
    # the time it went idle, and the timer, when it fires, closes the
    # connection or waits for what is left of the idle timeout.

    def _idle(self) -> None:
        """Nothing to answer from now on: close after the idle timeout unless a request comes."""
        self._idle_since = self._clock.seconds()
        if self._timer is None and self._idle_timeout:
            self._timer = self._clock.callLater(self._idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        if self._closed or self._inner is not None or not self._idle_timeout:
            return
        since = self._idle_since
        left = (
            self._idle_timeout
            if since is None
            else since + self._idle_timeout - self._clock.seconds()
        )
        if left > 0:
            self._timer = self._clock.callLater(left, self._check_idle)
            return
        self.timeoutConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def timeoutConnection(self) -> None:
        """Idle for the whole idle timeout: close."""
        self._send_unsent()
        self.transport.loseConnection()

    # -- reading requests --------------------------------------------------------

    def _next(self) -> None:
        """Answer the requests in the buffer, one after the other, while they finish at once."""
        while self._exchange is None and self._inner is None and not self._closed:
            buffer = self._buffer()
            if self._head is None:
                if not buffer:
                    return
                end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
                if end < 0:
                    if len(buffer) > MAX_HEAD or b"\n\n" in buffer:
                        self._hand_over()
                    return
                head = _parsed_head(buffer[:end])
                limit = None if head is None else self._door.takes_directly(head.path)
                if head is None or limit is None:
                    self._hand_over()
                    return
                self._head, self._head_end = head, end + 4
                self._need = end + 4 + head.length
                if not self._accept(head, limit):
                    return
            head = self._head
            assert head is not None
            need = self._need
            if len(buffer) < need:
                return
            body = buffer[self._head_end : need]
            self._head = None
            self._keep(buffer[need:])
            self._uploaded()
            exchange = self._exchange = Exchange(self, head, body, self._remote)
            self._idle_since = None  # answering takes as long as it takes
            if self._size > PAUSE_BUFFERED and not self._reading_paused:
                self._reading_paused = True
                self.transport.pauseProducing()
            if not self._door.answer_fast(exchange):
                # Not the front door's after all (the app went away since the head).
                self._exchange = None
                self._keep(buffer)
                self._hand_over()
                return
            if not exchange.ended:
                exchange.on_end(self._exchange_ended, exchange)
                return
            self._ended(exchange)

    def _accept(self, head: Head, limit: int) -> bool:
        """The body limit and C{Expect: 100-continue}; C{False}: refused (413)."""
        if head.length > limit:
            self._closed = True
            self._head = None
            self._send_unsent()
            refuse_body(
                self.transport,
                head.target,
                head.request_id,
                f"Request body of {head.length} bytes exceeds the limit of {limit}",
            )
            return False
        if head.length and self._size < self._need:
            if head.expect:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # A shutdown waits for a body that is still arriving.
            state = getattr(self.site, "state", None)
            if state is not None:
                state.request_started()
                self._uploading = True
        return True

    def _uploaded(self) -> None:
        if self._uploading:
            self._uploading = False
            self.site.state.request_finished()

    def _exchange_ended(self, result: object, exchange: Exchange) -> None:
        """A response written later than it was asked for: go on with the next request."""
        if self._ended(exchange):
            self._next()

    def _ended(self, exchange: Exchange) -> bool:
        """Done with C{exchange}; whether the connection takes another request."""
        if self._exchange is not exchange:
            return False
        self._exchange = None
        if self._closed:
            return False
        if exchange.head.close or exchange.gone:
            self._closed = True
            self._send_unsent()
            self.transport.loseConnection()
            return False
        self._idle()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        return True

    def _hand_over(self) -> None:
        """From the current request on, twisted.web serves this connection."""
        self._send_unsent()  # before anything twisted.web writes
        self._uploaded()
        self._stop_timer()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        self.transport.unregisterProducer()
        self._inner = inner = self.site.http_channel(self._addr)
        inner.makeConnection(self.transport)
        data = self._buffer()
        self._keep(b"")
        if data:
            inner.dataReceived(data)

    # -- writing responses -------------------------------------------------------

    def write_response(
        self, exchange: Exchange, response: Response, request_id: str
    ) -> Deferred[None] | None:
        """
        Write C{response} for C{exchange} (see L{Exchange.respond}): the head
        with the runtime's own C{server}, C{date} and C{x-request-id}, the
        app's other end-to-end headers, and the framing: C{content-length}
        for a body given whole, the app's own length or chunks for a stream,
        nothing for C{HEAD}, 1xx, 204 and 304.  A response that cannot be
        written (a broken header, say) is logged and the connection aborted:
        the exchange then fails, never hangs.
        """
        try:
            return self._write_response(exchange, response, request_id)
        except Exception as error:
            log(
                "error",
                "buntime:http:write-failed",
                "Response could not be written",
                error=repr(error),
            )
            exchange.written = True
            self._closed = True
            self._send_unsent()  # the answers before this one
            self.transport.abortConnection()  # connectionLost tells the exchange
            return None

    def _write_response(
        self, exchange: Exchange, response: Response, request_id: str
    ) -> Deferred[None] | None:
        status = response.status
        exchange.status = status
        exchange.written = True
        head = exchange.head
        reason = RESPONSES.get(status, b"Unknown Status")
        lines = [
            b"HTTP/1.1 %d %s\r\nserver: %s\r\ndate: %s\r\nx-request-id: %s"
            % (status, reason, SERVER_VERSION, _date(self._clock.seconds()), _clean(request_id))
        ]
        block, given_length = response.headers.rendered(_render_headers)
        if block:
            lines.append(block)
        if head.close:
            lines.append(b"connection: close")
        body = response.body
        no_body = status in _NO_BODY or status < 200
        silent = no_body or head.method == "HEAD"
        if isinstance(body, bytes | bytearray):
            if not no_body:
                if silent and not body and given_length is not None and _LENGTH.match(given_length):
                    lines.append(b"content-length: " + given_length.encode("ascii"))
                else:
                    lines.append(b"content-length: %d" % len(body))
            lines.append(b"\r\n")
            self._write_soon(b"\r\n".join(lines) + (b"" if silent else bytes(body)))
            exchange.done()
            return None
        chunked = False
        if not no_body:
            if given_length is not None and _LENGTH.match(given_length):
                lines.append(b"content-length: " + given_length.encode("ascii"))
            elif not silent:
                lines.append(b"transfer-encoding: chunked")
                chunked = True
        lines.append(b"\r\n")
        self._write(b"\r\n".join(lines))
        return ensureDeferred(self._stream(exchange, body, chunked, silent))

    def _write_soon(self, data: bytes) -> None:
        """
        Write a whole response at the end of the reactor turn, with those of
        other connections (see L{_EndOfTurn}).
        """
        if not self._unsent:
            _EndOfTurn.of(self.site, self._clock).add(self)
        self._unsent.append(data)

    def _write(self, data: bytes) -> None:
        """C{transport.write(data)}, after what waits for the end of the turn."""
        self._send_unsent()
        self.transport.write(data)

    def _send_unsent(self) -> None:
        """
        Send what waits for the end of the turn: at once when nothing waits
        in Twisted's buffer, on a plain TCP connection (Twisted would
        otherwise ask epoll to wake it when the socket can take data, send
        on the next turn and ask epoll to stop: three system calls for one),
        else through the transport.
        """
        unsent = self._unsent
        if not unsent:
            return
        data = unsent[0] if len(unsent) == 1 else b"".join(unsent)
        unsent.clear()
        transport = self.transport
        if not transport.connected or transport.disconnecting:
            transport.write(data)  # Twisted drops it, or sends it before closing
            return
        sock = self._socket
        if sock is not None and not transport.dataBuffer and not transport._tempDataLen:
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # would block, or broken: Twisted's own write finds out which
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)

    async def _stream(self, exchange: Exchange, body: Any, chunked: bool, silent: bool) -> None:
        iterator: AsyncIterator[bytes] = body.__aiter__()
        write = self.transport.write  # nothing waits for the end of the turn now (see _write)
        try:
            if not silent:
                async for chunk in iterator:
                    if exchange.gone:
                        break
                    if chunk:
                        write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    waiter = self._writing_paused
                    if waiter is not None:
                        await waiter
        except Exception as error:
            if not isinstance(error, CancelledError):  # cancelled: the client left
                log(
                    "error",
                    "buntime:http:stream-failed",
                    "Response stream failed",
                    error=str(error),
                )
            exchange.gone = True
            self._closed = True
            self.transport.abortConnection()  # connectionLost tells the exchange
            return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if (exchange.gone or silent) and aclose is not None:
                await aclose()
        if exchange.gone:
            return
        if chunked:
            write(b"0\r\n\r\n")
        exchange.done()

    # -- IPushProducer: the client's transport says when to stop writing ----------

    def pauseProducing(self) -> None:
        if self._writing_paused is None:
            self._writing_paused = Deferred()

    def resumeProducing(self) -> None:
        waiter, self._writing_paused = self._writing_paused, None
        if waiter is not None:
            waiter.callback(None)

    def stopProducing(self) -> None:
        if self._exchange is not None:
            self._exchange.gone = True
        self.resumeProducing()
