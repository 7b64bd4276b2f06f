"""
A request as the fast lane of L{buntime.web.h1} takes it: its head, parsed
only when plain HTTP/1.1 (L{parse_head}, L{parsed_head}), and the
L{Exchange} the front door answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.python.failure import Failure

from buntime._logging import log
from buntime._memo import Remembered
from buntime.http import Response

if TYPE_CHECKING:
    from buntime.web.h1 import FrontChannel

MAX_HEAD = 16 * 1024
"""The longest request head taken here (twisted.web's own limit for a line and for all headers)."""
MAX_HEADERS = 500
"""The most header lines taken here (twisted.web's limit)."""

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_METHOD = re.compile(rb"[A-Z]+\Z")
_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")  # visible ASCII: what twisted.web takes too


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


parsed_head: Callable[[bytes], Head | None] = Remembered(parse_head, size=256, longest=2048)
"""
L{parse_head}, remembering the last heads of at most 2 KiB: a client (a
service polling another, a load test) often sends the same head again, and
then gets the same (unchanging) L{Head}.
"""


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
