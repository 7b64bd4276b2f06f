"""
The worker's half of one response: status and headers go out with the first
body chunk, so a small response is exactly one
L{buntime.pool.events.ResponseStart} with C{end=True}.

Callers use one writer from one place at a time (each adapter awaits every
call before the next); all methods run in the reactor thread.
"""

from __future__ import annotations

from collections.abc import Iterable

from attrs import define
from twisted.internet.defer import Deferred, fail, succeed
from twisted.protocols import amp

from buntime._json import dumps
from buntime.headers import is_header_name
from buntime.pool import events
from buntime.pool.stream import MAX_VALUE_LENGTH, chunks, fit_text, split_first

NEW, HELD, STREAMING, ENDED, FAILED, CANCELLED = (
    "new",
    "held",
    "streaming",
    "ended",
    "failed",
    "cancelled",
)


class RequestCancelled(OSError):
    """The runtime cancelled the request: nothing more can be sent for it."""


_HEAD_ROOM = 32
"""Bytes of a response head besides its headers: status, end, brackets."""


def _text(value: bytes | str) -> str:
    if type(value) is str:
        return value
    return value.decode("latin-1") if isinstance(value, bytes | bytearray) else str(value)


def encode_headers(headers: Iterable[tuple[str | bytes, str | bytes]]) -> str:
    """
    Headers (names and values as text, or as bytes read as latin-1) as the
    JSON list of C{[name, value]} pairs the runtime reads.  A name that is
    not a token (a space, a colon, a line break in it) is refused, as
    gunicorn and uvicorn refuse it: no client could read the head.
    """
    pairs = [[_text(name), _text(value)] for name, value in headers]
    for name, _ in pairs:
        if not is_header_name(name):
            raise ValueError(f"invalid HTTP header name {name!r}")
    text = dumps(pairs)
    if len(text.encode("utf-8")) > MAX_VALUE_LENGTH - _HEAD_ROOM:
        raise ValueError(f"response headers too large ({len(text)} bytes; at most 64 KiB)")
    return text


@define(eq=False)
class ResponseWriter:
    """
    Sends the response to request C{rid} over C{protocol} (the worker's AMP
    connection).  C{start} holds the status and headers until the first
    C{write} or the C{end}; C{write(b"")} sends them at once (a streaming
    response's headers, before its first event).
    """

    protocol: amp.AMP
    rid: int
    state: str = NEW
    _status: int = 0
    _headers: str = "[]"
    _reason: str | None = None

    @property
    def started(self) -> bool:
        """Status and headers are set (sent or held)."""
        return self.state != NEW

    @property
    def finished(self) -> bool:
        """The response is over: ended, failed or cancelled."""
        return self.state in (ENDED, FAILED, CANCELLED)

    def start(
        self, status: int, headers: Iterable[tuple[str, str]], reason: str | None = None
    ) -> None:
        """
        Set the status, headers and, when the app gave its own, the status
        line's reason phrase (sent with the first body chunk).
        """
        if self.state == CANCELLED:
            raise RequestCancelled(f"request {self.rid} was cancelled")
        if self.state != NEW:
            raise RuntimeError("the response has already started")
        if not 100 <= int(status) <= 999:
            raise ValueError(f"invalid HTTP status {status!r}")
        self._status, self._headers = int(status), encode_headers(headers)
        self._reason = reason
        self.state = HELD

    def write(self, data: bytes) -> Deferred:
        """
        Send C{data}; fires once the runtime has taken it (backpressure).
        Fails with L{RequestCancelled} after a cancel.
        """
        if self.state == CANCELLED:
            return fail(RequestCancelled(f"request {self.rid} was cancelled"))
        if self.state == NEW:
            return fail(RuntimeError("response body sent before its status and headers"))
        if self.state in (ENDED, FAILED):
            return fail(RuntimeError("the response is already complete"))
        first, rest = split_first(bytes(data))
        if self.state == HELD:
            self.state = STREAMING
            self._send_start(first, end=False)
        elif first:
            rest.insert(0, first)
        if not rest:
            return succeed(None)
        return Deferred.fromCoroutine(self._send_chunks(rest))

    def end(self, data: bytes = b"") -> Deferred:
        """Send the last of the body (if any) and complete the response."""
        if self.state == NEW:
            return fail(RuntimeError("response ended before its status and headers"))
        if self.state == HELD:
            first, rest = split_first(bytes(data))
            if not rest:
                self.state = ENDED
                self._send_start(first, end=True)
                return succeed(None)
        if self.state == CANCELLED:
            return fail(RequestCancelled(f"request {self.rid} was cancelled"))
        return Deferred.fromCoroutine(self._end(data))

    def respond(
        self,
        status: int,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        reason: str | None = None,
    ) -> Deferred:
        """The whole response at once."""
        try:
            self.start(status, headers, reason)
        except Exception:
            return fail()
        return self.end(body)

    def send_message(self, data: bytes, binary: bool) -> Deferred:
        """
        Send one message on the WebSocket this response accepted (status
        101, sent); fires once the runtime has taken it (backpressure).
        """
        if self.state == CANCELLED:
            return fail(RequestCancelled(f"request {self.rid} was cancelled"))
        if self.state != STREAMING or self._status != 101:
            return fail(RuntimeError("no WebSocket was accepted on this response"))
        pieces = chunks(bytes(data)) or [b""]
        return Deferred.fromCoroutine(self._send_message(pieces, binary))

    def close_socket(self, code: int, reason: str) -> None:
        """Close the WebSocket this response accepted with C{code} and C{reason}."""
        if self.state == STREAMING and self._status == 101:
            self.protocol.callRemote(
                events.WebSocketClose, rid=self.rid, code=code, reason=fit_text(reason, 123)
            )

    def fail(self, error: str) -> None:
        """Tell the runtime the app failed on this request (unless it is over)."""
        if self.finished:
            return
        self.state = FAILED
        self.protocol.callRemote(events.ResponseError, rid=self.rid, error=fit_text(error))

    def cancel(self) -> None:
        """The runtime cancelled the request: send nothing more."""
        if self.state not in (ENDED, FAILED):
            self.state = CANCELLED

    async def _end(self, data: bytes) -> None:
        if data or self.state == HELD:
            await self.write(data)
        if self.state == CANCELLED:
            raise RequestCancelled(f"request {self.rid} was cancelled")
        if self.state != STREAMING:
            raise RuntimeError("the response is already complete")
        self.state = ENDED
        self.protocol.callRemote(events.ResponseEnd, rid=self.rid)

    async def _send_chunks(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            if self.state == CANCELLED:
                raise RequestCancelled(f"request {self.rid} was cancelled")
            await self.protocol.callRemote(events.ResponseBody, rid=self.rid, data=piece)

    async def _send_message(self, pieces: list[bytes], binary: bool) -> None:
        last = len(pieces) - 1
        for index, piece in enumerate(pieces):
            if self.state == CANCELLED:
                raise RequestCancelled(f"request {self.rid} was cancelled")
            await self.protocol.callRemote(
                events.WebSocketSend, rid=self.rid, data=piece, binary=binary, final=index == last
            )

    def _send_start(self, body: bytes, end: bool) -> None:
        head = events.response_head(self._status, self._headers, end, self._reason)
        self.protocol.callRemote(events.ResponseStart, rid=self.rid, head=head, body=body)
