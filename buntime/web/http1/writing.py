"""
Writing answers on a client connection: the framing an answer owes the
client (C{content-length}, chunks, or the end of the connection for an
HTTP/1.0 stream), never letting an app's wrong C{Content-Length} or interim
status desynchronise the connection, streamed bodies paced by the client,
and whole answers gathered for the end of the reactor turn.  The
L{AnswerWriting} side of an L{buntime.web.http1.connection.HTTP1Connection}.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from buntime._turn import EndOfTurn
from buntime.http import Response
from buntime.logs import log
from buntime.sockets import send_now
from buntime.stream import PushedStream
from buntime.web.http1.exchange import Exchange
from buntime.web.http1.response import (
    NO_BODY,
    header_lines,
    reason_phrase,
    status_line,
)

UNSENT_MOST = 64 * 1024
"""The most bytes of whole answers kept for the end of the turn (see C{_write_soon})."""


class AnswerWriting:
    """
    The writing side of an L{HTTP1Connection}: a mixin working on the
    connection's state (declared below for the type checker).
    """

    if TYPE_CHECKING:
        transport: Any
        _clock: IReactorTime
        _closed: bool
        _handed: bool
        _socket: Any
        _unsent: list[bytes]
        _unsent_size: int
        _turn: EndOfTurn
        _writes_paused: Deferred[None] | None
        _upload: PushedStream | None

        def _close(self, linger: bool = False) -> None: ...

    def write_response(self, exchange: Exchange, response: Response) -> Deferred[None] | None:
        """
        Write C{response} for C{exchange}: a C{None} once a body of bytes is
        written, or a Deferred that fires when a stream is.  A response that
        cannot be written (a broken header, say) is logged and the
        connection aborted: the exchange then ends, never hangs.  An answer
        written before its upload has all arrived closes the connection
        after it (what is left of the upload is not read).
        """
        if self._upload is not None and exchange.body is self._upload:
            exchange.close = True
        try:
            return self._write_response(exchange, response)
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
            self.transport.abortConnection()  # connectionLost ends the exchange
            return None

    def _write_response(self, exchange: Exchange, response: Response) -> Deferred[None] | None:
        status = response.status
        if not 200 <= status <= 999:
            response = _not_final(exchange, response)
            status = response.status
        exchange.status = status
        exchange.written = True
        head = exchange.head
        lines, given = header_lines(response.headers)
        reason = None if response.reason is None else reason_phrase(response.reason)
        lines.insert(0, status_line(status, self._clock.seconds(), exchange.request_id, reason))
        body = response.body
        no_body = status in NO_BODY
        silent = no_body or head.method == "HEAD"
        close = exchange.close
        if isinstance(body, bytes | bytearray):
            if not no_body:
                length = len(body)
                if given is not None and given != length:
                    if not silent:  # send what was declared (or less), then close
                        _wrong_length(exchange, given, length)
                        close = True
                        body = body[:given]
                    length = given
                lines.append(b"content-length: %d" % length)
            lines.append(self._connection_line(exchange, close))
            self._write_soon(b"\r\n".join(lines) + (b"" if silent else bytes(body)))
            exchange.done()
            return None
        chunked = False
        if not no_body:
            if given is not None:
                lines.append(b"content-length: %d" % given)
            elif silent:
                pass
            elif head.version == "1.1":
                lines.append(b"transfer-encoding: chunked")
                chunked = True
            else:  # HTTP/1.0: the body ends with the connection
                close = True
        lines.append(self._connection_line(exchange, close))
        self._write(b"\r\n".join(lines))
        declared = None if no_body or silent else given
        return ensureDeferred(self._stream(exchange, body, chunked, silent, declared))

    @staticmethod
    def _connection_line(exchange: Exchange, close: bool) -> bytes:
        """The end of the head: C{connection} as it will be after this answer."""
        exchange.close = close
        if close:
            return b"connection: close\r\n\r\n"
        if exchange.head.keep_alive:
            return b"connection: keep-alive\r\n\r\n"
        return b"\r\n"

    async def _stream(
        self, exchange: Exchange, body: Any, chunked: bool, silent: bool, length: int | None
    ) -> None:
        iterator: AsyncIterator[bytes] = body.__aiter__()
        sent, over = 0, False
        try:
            if not silent:
                sent, over = await self._copy(exchange, iterator, chunked, length)
        except Exception as error:
            exchange.gone = True
            if isinstance(error, CancelledError):  # the client left
                self._closed = True
                self.transport.abortConnection()  # connectionLost ends the exchange
                return
            log("error", "buntime:http:stream-failed", "Response stream failed", error=str(error))
            # closed in order, as gunicorn and uvicorn do: the client reads what
            # was sent, cut short (a reset could destroy it unread)
            self._close(linger=True)  # connectionLost ends the exchange
            return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and (exchange.gone or silent or over):
                await aclose()
        if exchange.gone:
            return
        if length is not None and (over or sent != length):
            _wrong_length(exchange, length, None if over else sent)
            exchange.close = True  # the client got what was declared, or less: no reuse
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        exchange.done()

    async def _copy(
        self,
        exchange: Exchange,
        iterator: AsyncIterator[bytes],
        chunked: bool,
        length: int | None,
    ) -> tuple[int, bool]:
        """
        Write the body's chunks while the client reads them: the bytes sent,
        and whether the body had more than C{length} (cut there).
        """
        write = self.transport.write  # nothing waits for the end of the turn now (see _write)
        sent = 0
        async for chunk in iterator:
            if exchange.gone:
                break
            over = False
            if length is not None and sent + len(chunk) > length:
                chunk, over = chunk[: length - sent], True  # send what was declared, no more
            if chunk:
                sent += len(chunk)
                write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if over:
                return sent, True
            waiter = self._writes_paused
            if waiter is not None:
                await waiter
        return sent, False

    def _write_soon(self, data: bytes) -> None:
        """
        Write a whole answer at the end of the reactor turn (see
        L{buntime._turn}); at once when what waits passes C{UNSENT_MOST},
        so that a client that does not read pauses the answers (many
        pipelined requests answered in one turn) before they pile up.
        """
        unsent = self._unsent
        if not unsent:
            self._turn.add(self._send_unsent)
        unsent.append(data)
        self._unsent_size += len(data)
        if self._unsent_size > UNSENT_MOST:
            self._send_unsent()

    def _write(self, data: bytes) -> None:
        """C{transport.write(data)}, after what waits for the end of the turn."""
        self._send_unsent()
        self.transport.write(data)

    def _send_unsent(self) -> None:
        unsent = self._unsent
        if not unsent or self._handed:
            return
        data = unsent[0] if len(unsent) == 1 else b"".join(unsent)
        unsent.clear()
        self._unsent_size = 0
        send_now(self.transport, self._socket, data)


def _not_final(exchange: Exchange, response: Response) -> Response:
    """An app's interim (1xx) or impossible status is no answer: 502, and the body closed."""
    log(
        "error",
        "buntime:http:not-final",
        f"The app answered {exchange.head.path} with status {response.status}, "
        "not a final status; answering 502",
        request_id=exchange.request_id,
        status=response.status,
    )
    aclose = getattr(response.body, "aclose", None)
    if aclose is not None:
        ensureDeferred(aclose()).addErrback(lambda _: None)
    return Response.error(
        502, "BAD_GATEWAY", f"The app answered with status {response.status}, not a final answer"
    )


def _wrong_length(exchange: Exchange, declared: int, sent: int | None) -> None:
    log(
        "warn",
        "buntime:http:wrong-length",
        f"The answer to {exchange.head.path} declared Content-Length {declared} but had "
        + ("more" if sent is None else f"{sent} bytes")
        + "; sent what was declared and closed the connection",
        request_id=exchange.request_id,
        declared=declared,
    )
