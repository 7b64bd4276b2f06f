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
from collections.abc import AsyncIterator
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
from buntime._turn import EndOfTurn, send_now
from buntime.http import Headers, Response
from buntime.web.exchange import MAX_HEAD, Exchange, Head, parsed_head
from buntime.web.frontdoor import HOP_BY_HOP
from buntime.web.limits import refuse_body

PAUSE_BUFFERED = 256 * 1024
"""Stop reading from a client once this much of its next requests waits behind the current one."""

_LENGTH = re.compile(r"[0-9]+\Z")
_NO_BODY = frozenset({204, 304})
_HOP_BY_HOP = HOP_BY_HOP | {"content-length", "date", "server"}
"""Response headers the channel writes itself, or never passes on."""


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
                head = parsed_head(buffer[:end])
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
        other connections (see L{buntime._turn}).
        """
        if not self._unsent:
            EndOfTurn.of(self._clock).add(self._send_unsent)
        self._unsent.append(data)

    def _write(self, data: bytes) -> None:
        """C{transport.write(data)}, after what waits for the end of the turn."""
        self._send_unsent()
        self.transport.write(data)

    def _send_unsent(self) -> None:
        """Send what waits for the end of the turn (see L{buntime._turn.send_now})."""
        unsent = self._unsent
        if not unsent:
            return
        data = unsent[0] if len(unsent) == 1 else b"".join(unsent)
        unsent.clear()
        send_now(self.transport, self._socket, data)

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
